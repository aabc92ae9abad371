#!/usr/bin/env bash
# Build the CPU training image and the inference image with podman, with no container registry.
#
# Usage: scripts/build-images.sh            (run as root, from anywhere)
#
# Builds, from the repository this script lives in:
#   localhost/ml-launcher:cpu     docker/Dockerfile            `train` (torch, horovod, mpi backends)
#   localhost/ml-launcher:serve   docker/Dockerfile.inference  `serve`
#
# A fresh Debian 12 machine of our kind has no container engine and reaches no registry, only the
# Debian mirror and PyPI (through a TLS-intercepting proxy), plus the CPU torch wheel on disk. So:
#   1. tools: podman, buildah, runc, netavark, aardvark-dns, debootstrap (apt) when missing;
#   2. engine settings: a containers.conf drop-in (rlimits this sandbox can grant; runc);
#   3. base images: localhost/debian:bookworm from debootstrap, then a stand-in for
#      python:3.11-slim-bookworm (docker/python-base.Containerfile) tagged with that name, so the
#      Dockerfiles' FROM resolves locally; a real image of that name is kept when present;
#   4. pip during the build: one read-only mount at /etc/xdg/pip (pip's site config directory)
#      gives the host's CA bundle, the host's find-links wheels (the CPU torch wheel) and its
#      local file:// indexes (hard links, not copies) next to PyPI, and the Horovod wheels that
#      scripts/install-horovod.sh cached on this host (the CPU image installs a fitting one
#      instead of compiling Horovod); nothing of it stays in an image (buildah commits the mount
#      point as an empty directory);
#   5. the two images. They share their first instructions up to the torch install, so torch
#      is installed once; every step is cached, so a second run rebuilds only the layers
#      whose inputs changed.
#
# Environment:
#   ML_IMAGES_WORK   scratch folder for the debootstrap tree, pip config and logs
#                    (default /var/tmp/ml-launcher-images)
#   ML_IMAGES_TAG    image name prefix (default localhost/ml-launcher)
#
# Idempotent. Fails (non-zero, the failing step and its log named on stderr) when not root and
# something must be installed, when debootstrap or a build fails.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
work=${ML_IMAGES_WORK:-/var/tmp/ml-launcher-images}
tag=${ML_IMAGES_TAG:-localhost/ml-launcher}
python_base=docker.io/library/python:3.11-slim-bookworm
standin_label=org.ml-launcher.standin
inputs_label=org.ml-launcher.inputs

die() {
    printf 'build-images: error: %s\n' "$*" >&2
    exit 1
}
log() {
    printf 'build-images: [+%ss] %s\n' "$SECONDS" "$*" >&2
}
# Run a step with its output in a log file; on failure show the log's tail and stop.
logged() {
    local name=$1
    shift
    if ! "$@" >"$work/$name.log" 2>&1; then
        tail -n 30 "$work/$name.log" >&2
        die "$name failed; full log: $work/$name.log"
    fi
}

ensure_tools() {
    local missing=() tool
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; run as root to install them"
    log "installing podman, runc, debootstrap (apt)"
    export DEBIAN_FRONTEND=noninteractive
    logged apt-update apt-get update -qq
    # runc, not crun: crun 1.8 refuses this kernel's hybrid cgroup v1/v2 layout.
    logged apt-install apt-get install -y -qq --no-install-recommends \
        podman buildah runc netavark aardvark-dns iptables debootstrap uidmap
}

# Podman's rootful default rlimits (nofile/nproc 1048576) exceed what a process without
# CAP_SYS_RESOURCE may set, and every container start fails; use the host's hard limits, nproc
# also capped at kernel.pid_max (podman caps it there itself, and asks for more otherwise).
ensure_engine_config() {
    local nofile nproc pidmax conf=/etc/containers/containers.conf.d/50-ml-launcher.conf text
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    pidmax=$(cat /proc/sys/kernel/pid_max)
    [[ $nofile == unlimited ]] && nofile=1048576
    if [[ $nproc == unlimited ]] || ((nproc > pidmax)); then nproc=$pidmax; fi
    text=$(printf '%s\n' '# Written by ml-launcher scripts/build-images.sh: see docker/README.md.' \
        '[containers]' "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]" \
        '' '[engine]' 'runtime = "runc"')
    if [[ ! -f $conf || $(cat "$conf") != "$text" ]]; then
        [[ $(id -u) -eq 0 ]] || die "$conf needs writing; run as root"
        mkdir -p "$(dirname "$conf")"
        printf '%s\n' "$text" >"$conf"
        log "wrote $conf"
    fi
}

ensure_debian_base() {
    podman image exists localhost/debian:bookworm && return 0
    local mirror rootfs=$work/rootfs
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    log "debootstrap bookworm from $mirror"
    rm -rf "$rootfs"
    logged debootstrap debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - localhost/debian:bookworm >/dev/null
    rm -rf "$rootfs"
}

ensure_python_base() {
    if podman image exists "$python_base" &&
        [[ -z $(podman image inspect --format "{{index .Labels \"$standin_label\"}}" "$python_base") ]]; then
        return 0 # a real python image (pulled or loaded): use it
    fi
    log "python base (stand-in for $python_base)"
    logged python-base podman build --pull=never --label "$standin_label=1" \
        -f "$repo/docker/python-base.Containerfile" -t "$python_base" "$repo/docker"
}

# The mount pip reads during the builds: pip.conf, the CA bundle, wheels/ and index<N>/.
prepare_pip_config() {
    local dir=$work/pipcfg findlinks=() indexes=() value entry n=0 hostpip
    rm -rf "$dir"
    mkdir -p "$dir/wheels"
    hostpip=(python3 -m pip config get)
    for value in "${PIP_FIND_LINKS:-}" "$("${hostpip[@]}" global.find-links 2>/dev/null || true)"; do
        for entry in $value; do [[ -d $entry ]] && findlinks+=("$entry"); done
    done
    for entry in "${findlinks[@]}"; do
        for value in "$entry"/*.whl; do
            [[ -f $value ]] && { ln -f "$value" "$dir/wheels/" 2>/dev/null || cp "$value" "$dir/wheels/"; }
        done
    done
    value=$("${hostpip[@]}" global.extra-index-url 2>/dev/null || true)
    for entry in $value; do
        entry=${entry#file://}
        [[ $entry == /* && -d $entry ]] || continue
        # A local index is a simple/ tree whose links climb to a sibling files/ folder.
        if cp -al "$(dirname "$entry")" "$dir/index$n" 2>/dev/null; then
            indexes+=("file:///etc/xdg/pip/index$n/$(basename "$entry")")
            n=$((n + 1))
        fi
    done
    # scripts/install-horovod.sh's wheel cache: one folder per (Horovod, torch, Python, ops).
    mkdir -p "$dir/horovod"
    for entry in "${ML_LAUNCHER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ml-launcher/wheels}"/horovod-*/; do
        [[ -d $entry ]] && cp -r "$entry" "$dir/horovod/"
    done
    cp /etc/ssl/certs/ca-certificates.crt "$dir/host-ca.crt"
    {
        printf '[global]\nfind-links = /etc/xdg/pip/wheels\n'
        printf 'extra-index-url = %s https://pypi.org/simple\n' "${indexes[*]}"
        printf 'cert = /etc/xdg/pip/host-ca.crt\nretries = 1\ntimeout = 60\n'
    } >"$dir/pip.conf"
}

# A digest of everything an image is built from: the base image, the Dockerfile and every file
# under the paths its COPY instructions take from the build context. The image carries it as a
# label; when it matches, the build is skipped (podman would otherwise still walk and hash the
# build context and check every cached step).
inputs_digest() {
    local dockerfile=$1 paths
    mapfile -t paths < <(awk 'toupper($1) == "COPY" && $2 !~ /^--from/ {
        for (i = 2; i < NF; i++) print $i }' "$repo/$dockerfile")
    {
        podman image inspect --format '{{.Id}}' "$python_base"
        (cd "$repo" && find "$dockerfile" "${paths[@]}" -type f ! -path '*/__pycache__/*' \
            ! -name '*.pyc' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
}

build_image() {
    local name=$1 dockerfile=$2 digest old extra=("${@:3}")
    digest=$(inputs_digest "$dockerfile")
    old=$(podman image inspect --format '{{.Id}}' "$tag:$name" 2>/dev/null || true)
    if [[ -n $old && $(podman image inspect --format "{{index .Labels \"$inputs_label\"}}" \
        "$tag:$name") == "$digest" ]]; then
        log "image $tag:$name is up to date"
        return 0
    fi
    log "image $tag:$name ($dockerfile)"
    # download.pytorch.org (the Dockerfiles' CPU index) does not resolve here: fail it fast.
    logged "build-$name" podman build --pull=never --layers --label "$inputs_label=$digest" "${extra[@]}" \
        -v "$work/pipcfg:/etc/xdg/pip:ro" --add-host download.pytorch.org:127.0.0.1 \
        -f "$repo/$dockerfile" -t "$tag:$name" "$repo"
    # The image this build replaced, now untagged: remove it (its layers that other images or
    # the build cache still use stay). Disk is shared.
    if [[ -n $old && $old != "$(podman image inspect --format '{{.Id}}' "$tag:$name")" ]] &&
        [[ -z $(podman image inspect --format '{{join .RepoTags ","}}' "$old") ]]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
}

mkdir -p "$work"
ensure_tools
ensure_engine_config
ensure_debian_base
ensure_python_base
prepare_pip_config
build_image cpu docker/Dockerfile --build-arg HOROVOD_WHEELS=/etc/xdg/pip/horovod
build_image serve docker/Dockerfile.inference
rm -rf "$work/pipcfg"
podman image ls --filter "reference=$tag" --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2
log "done"
