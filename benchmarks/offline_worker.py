"""vLLM's offline ``LLM.generate`` in a process of its own, driven line by line: the reference the
server-overhead scenario compares ``/v1/generate`` against, with the engine the server builds for
the same model (no LoRA, the same KV cache, whole prefills on CPU). Each stdin line is a JSON
request ``{"prompt_token_ids": [[...], ...], "n", "max_tokens", "temperature", "seed"}``; each
answer is a line ``@@ {"tokens": completion tokens, "seconds": wall time of generate}`` (vLLM logs
to stdout too; the marker tells answers apart).

    python -m benchmarks.offline_worker --model FOLDER
"""

import argparse
import json
import os
import sys
import time

from generator_server.__main__ import bind_cpu_threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--kv-cache-bytes", type=int, default=2**30)
    parser.add_argument("--max-model-len", type=int, default=4096)
    args = parser.parse_args()
    bind_cpu_threads("all")  # as grpo-math serve does; here the engine core runs in this process too
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.model,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=max(args.max_model_len, 8192),
        kv_cache_memory_bytes=args.kv_cache_bytes,
        enable_chunked_prefill=False,
        logprobs_mode="processed_logprobs",
    )
    print("@@", json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        prompts = [{"prompt_token_ids": ids} for ids in request["prompt_token_ids"]]
        params = [
            SamplingParams(
                n=request["n"],
                max_tokens=request["max_tokens"],
                temperature=request["temperature"],
                seed=None if request.get("seed") is None else request["seed"] + index * request["n"],
                logprobs=0,
            )
            for index in range(len(prompts))
        ]
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(sample.token_ids) for output in outputs for sample in output.outputs)
        print("@@", json.dumps({"tokens": tokens, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
