# `make demo` and `make test` are the only set-up a fresh machine needs: each creates .venv
# when it is missing and installs the project into it.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt

.PHONY: venv test test-fast demo lint format clean images

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0 numpy
	$(PIP) -e '.[torch,test,dev,serve]' --config-settings editable_mode=compat
	# Byte-compile now: where PYTHONDONTWRITEBYTECODE is set, every start would compile again.
	$(PY) -m compileall -q launcher collectives serving
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest tests/unit

# The CPU training and inference images (podman, no registry needed): see docker/README.md.
images:
	scripts/build-images.sh

demo: venv
	$(VENV)/bin/launcher local --hosts 2 --nproc-per-host 2 examples/train_regression.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	# The rank programs run as scripts with tests/bin as their first import path.
	MYPYPATH=tests/bin $(VENV)/bin/mypy --explicit-package-bases $(wildcard tests/bin/*.py)
	$(VENV)/bin/shellcheck .ci/run scripts/install-horovod.sh scripts/gpu-tier.sh \
		scripts/build-images.sh examples/slurm/train.sbatch
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.gpu docker/Dockerfile.inference \
		docker/python-base.Containerfile

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
