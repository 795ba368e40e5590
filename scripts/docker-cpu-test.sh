#!/usr/bin/env bash
# `docker compose --profile cpu up` end to end, on loopback: the generator and the trainer
# containers train 2 steps of the embedded model; the run folder must appear in the `runs`
# volume; `docker compose down -v` must remove containers and volumes. `make docker-cpu-test`
# runs it after `make docker-cpu` (the image).
set -euo pipefail
cd "$(dirname "$0")/.."
project=grpo-math-test
export COMPOSE_PROJECT_NAME=$project
export GRPO_MATH_API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export MAX_STEPS=2 MAX_COMPLETION_LENGTH=32 RUN_NAME=compose-test
export GENERATOR_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CPU_BASE_IMAGE=${CPU_BASE_IMAGE:-$(docker image inspect grpo-math-base:bookworm >/dev/null 2>&1 && echo grpo-math-base:bookworm || echo python:3.11-slim-bookworm)}
cleanup() { docker compose --profile cpu down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

started=$(date +%s)
docker compose --profile cpu up --no-build --abort-on-container-exit --exit-code-from trainer-cpu
echo "compose up: trainer exited 0 after $(( $(date +%s) - started )) s"

echo "the run folder in the volume ${project}_runs:"
docker run --rm -v "${project}_runs:/runs" --entrypoint sh grpo-math:cpu -c \
    'ls /runs/compose-test && test "$(wc -l < /runs/compose-test/metrics.jsonl)" = 2 && echo "metrics.jsonl: 2 rows"'

docker compose --profile cpu down -v --remove-orphans
left=$(docker volume ls -q --filter "name=${project}_"; docker ps -aq --filter "name=${project}-")
[ -z "$left" ] || { echo "left behind after down -v: $left" >&2; exit 1; }
echo "down -v: no containers or volumes of $project left"
