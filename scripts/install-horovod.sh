#!/usr/bin/env bash
# Build and install Horovod (PyTorch + Gloo + MPI, optionally NCCL) into a virtual environment.
#
# Usage: scripts/install-horovod.sh VENV
#
# Horovod 0.28.1 (the last release) does not build against torch >= 2.1 as published: its CMake
# files hard-code C++14 and torch's headers need C++17, and pip's build isolation hides torch from
# the build. This script downloads the sdist, patches the two CMake files to C++17 and builds
# without isolation against the torch already installed in VENV (see
# /work/shared/reference/machine-notes.md section 3).
#
# The built wheel is cached outside the repository, keyed by Horovod version, torch version,
# Python tag and GPU operations, so a machine that runs CI again installs the cached wheel in a
# few seconds instead of compiling for ~90 s.
#
# Environment:
#   HOROVOD_VERSION          Horovod release to build (default 0.28.1).
#   HOROVOD_GPU_OPERATIONS   empty (default): CPU build; NCCL: build the NCCL GPU operations
#                            (needs CUDA, NCCL headers and a CUDA build of torch).
#   HOROVOD_MAKEFLAGS        make parallelism (default -j2; setup.py would otherwise use -j8).
#   ML_LAUNCHER_WHEEL_CACHE  wheel cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/ml-launcher/wheels).
#   HOROVOD_CACHED_ONLY      non-empty: install only from the cache; exit 3 (nothing changed)
#                            when it holds no wheel, instead of building one (docker/Dockerfile
#                            installs the build tools only then).
#
# Idempotent: exits 0 at once when VENV already imports a matching horovod.torch.
# Fails (non-zero, with a message on stderr) when VENV has no python or no torch, when the patch
# no longer applies, or when the build or the post-install check fails.
set -euo pipefail

die() {
    printf 'install-horovod: error: %s\n' "$*" >&2
    exit 1
}
log() {
    printf 'install-horovod: %s\n' "$*" >&2
}

[[ $# -eq 1 ]] || die "usage: $0 VENV"
venv=$1
py="$venv/bin/python"
[[ -x "$py" ]] || die "$py is not an executable python; create the venv first (make venv)"

hvd_version=${HOROVOD_VERSION:-0.28.1}
gpu_ops=${HOROVOD_GPU_OPERATIONS:-}
case "$gpu_ops" in
    "") variant=cpu ;;
    NCCL) variant=nccl ;;
    *) die "HOROVOD_GPU_OPERATIONS must be empty or NCCL, not '$gpu_ops'" ;;
esac
cache_root=${ML_LAUNCHER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ml-launcher/wheels}

torch_version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) ||
    die "torch is not importable in $venv; install it first (pip install torch==2.13.0)"
py_tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key="horovod-${hvd_version}_torch-${torch_version}_${py_tag}_${variant}"
cache_dir="$cache_root/$key"

# The check that decides both "already installed" and "install succeeded": horovod.torch imports
# (an ABI mismatch with torch fails here), the version matches, and the controllers we need are
# compiled in. Arguments are passed as argv, never pasted into the program text.
check_program='
import sys
import horovod
import horovod.torch as hvd
want_version, want_nccl = sys.argv[1], sys.argv[2] == "nccl"
problems = []
if horovod.__version__ != want_version:
    problems.append(f"version {horovod.__version__} != {want_version}")
if not hvd.gloo_built():
    problems.append("gloo not built")
if not hvd.mpi_built():
    problems.append("mpi not built")
if want_nccl and not hvd.nccl_built():
    problems.append("nccl not built")
if problems:
    sys.exit("horovod.torch unusable: " + ", ".join(problems))
'
horovod_ok() {
    "$py" -c "$check_program" "$hvd_version" "$variant"
}

if horovod_ok 2>/dev/null; then
    log "horovod $hvd_version ($variant) already works with torch $torch_version in $venv; nothing to do"
    exit 0
fi

mkdir -p "$cache_dir"
# Two CI jobs on one machine must not build into the same cache entry at once.
exec 9>"$cache_dir/.lock"
flock 9

shopt -s nullglob
wheels=("$cache_dir"/horovod-*.whl)
shopt -u nullglob

if [[ ${#wheels[@]} -eq 0 && -n ${HOROVOD_CACHED_ONLY:-} ]]; then
    log "no cached wheel in $cache_dir (HOROVOD_CACHED_ONLY: not building)"
    exit 3
fi
if [[ ${#wheels[@]} -eq 0 ]]; then
    log "building horovod $hvd_version ($variant) against torch $torch_version ($py_tag)"
    work=$(mktemp -d)
    trap 'rm -rf -- "$work"' EXIT
    "$py" -m pip download --quiet --no-deps --no-binary :all: --no-cache-dir \
        -d "$work" "horovod==$hvd_version"
    tar -xzf "$work/horovod-$hvd_version.tar.gz" -C "$work"
    src="$work/horovod-$hvd_version"
    cmake_files=("$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt")
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "${cmake_files[@]}"
    for f in "${cmake_files[@]}"; do
        grep -q 'set(CMAKE_CXX_STANDARD 17)' "$f" || die "C++17 patch did not apply to $f"
    done
    # setuptools >= 70.1 ships bdist_wheel; older ones need the separate wheel package.
    "$py" -c 'import setuptools.command.bdist_wheel' 2>/dev/null ||
        "$py" -m pip install --quiet wheel
    build_env=(
        HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
        HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 "MAKEFLAGS=${HOROVOD_MAKEFLAGS:--j2}"
    )
    if [[ -n "$gpu_ops" ]]; then
        build_env+=("HOROVOD_GPU_OPERATIONS=$gpu_ops")
    fi
    env "${build_env[@]}" "$py" -m pip wheel --quiet --no-deps --no-build-isolation \
        --no-cache-dir -w "$work/wheelhouse" "$src"
    built=("$work"/wheelhouse/horovod-*.whl)
    [[ -f "${built[0]}" ]] || die "pip wheel produced no horovod wheel in $work/wheelhouse"
    # Copy then rename, so a killed copy never leaves a truncated wheel that looks valid.
    name=$(basename -- "${built[0]}")
    cp -- "${built[0]}" "$cache_dir/.$name.partial"
    mv -- "$cache_dir/.$name.partial" "$cache_dir/$name"
    wheels=("$cache_dir/$name")
else
    log "installing cached wheel ${wheels[0]}"
fi

"$py" -m pip install --quiet --no-cache-dir --force-reinstall --no-deps -- "${wheels[0]}"
# Its run-time dependencies (cloudpickle, psutil, pyyaml, packaging, cffi) come normally.
"$py" -m pip install --quiet -- "${wheels[0]}"
horovod_ok || die "horovod installed from ${wheels[0]} but the check failed (see above)"
log "horovod $hvd_version ($variant) installed into $venv from ${wheels[0]}"
