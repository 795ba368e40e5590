#!/usr/bin/env bash
# `docker compose -f compose.cpu.yaml up` end to end, on loopback, as a user runs it (no
# GRPO_MATH_API_KEY): the api-key service generates the key, the generator and the trainer
# containers read it and train 2 steps of the embedded model; api-key's log and
# `run --rm api-key --show` must give the same key; the run folder must appear in the `runs`
# volume; `down -v` must remove containers and volumes. `make docker-cpu-test` runs it after
# `make docker-cpu` (the image).
set -euo pipefail
cd "$(dirname "$0")/.."
project=grpo-math-test
compose() { docker compose -f compose.cpu.yaml "$@"; }
export COMPOSE_PROJECT_NAME=$project
export GRPO_MATH_API_KEY=  # empty, set: wins over a .env, and api-key generates the key
export MAX_STEPS=2 MAX_COMPLETION_LENGTH=32 RUN_NAME=compose-test
export GENERATOR_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CPU_BASE_IMAGE=${CPU_BASE_IMAGE:-$(docker image inspect grpo-math-base:bookworm >/dev/null 2>&1 && echo grpo-math-base:bookworm || echo python:3.11-slim-bookworm)}
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

started=$(date +%s)
# Naming trainer-cpu makes its exit, not the one-shot api-key's, end `up`; its dependencies start
# first and --attach-dependencies shows their logs.
compose up --no-build --attach-dependencies --abort-on-container-exit --exit-code-from trainer-cpu trainer-cpu
echo "compose up: trainer exited 0 after $(( $(date +%s) - started )) s"

key=$(compose run --rm -T api-key --show | tr -d '\r')
[ "${#key}" -ge 40 ] || { echo "run --rm api-key --show gave no key: '$key'" >&2; exit 1; }
compose logs api-key | grep -qF -- "$key" || { echo "api-key's log does not show the generated key" >&2; exit 1; }
echo "generated API key: ${#key} characters, in api-key's log and from run --rm api-key --show"

echo "the run folder in the volume ${project}_runs:"
docker run --rm -v "${project}_runs:/runs" --entrypoint sh grpo-math:cpu -c \
    'ls /runs/compose-test && test "$(wc -l < /runs/compose-test/metrics.jsonl)" = 2 && echo "metrics.jsonl: 2 rows"'

compose down -v --remove-orphans
left=$(docker volume ls -q --filter "name=${project}_"; docker ps -aq --filter "name=${project}-")
[ -z "$left" ] || { echo "left behind after down -v: $left" >&2; exit 1; }
echo "down -v: no containers or volumes of $project left"
