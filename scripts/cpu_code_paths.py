"""Which CPU kernels an environment variable changes on this machine, told by the results' bits.

    python scripts/cpu_code_paths.py ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2

Each variable runs alone, then all together, in a fresh process each (the libraries read them once,
when loaded), on the products the trainer's numerics rest on: a float32 matrix product (MKL), a
bf16 one (oneDNN), softmax and log-sum-exp (ATen's vectorised kernels) and float32 attention
(ATen's CPU flash attention). A result whose bits differ from the run without the variable was
computed by another kernel. `.ci/run` prints this before running the numerics tests a second time
under the variables, so the log shows which of them took effect on the machine CI got: on a CPU
whose best path a variable already is (ONEDNN_MAX_CPU_ISA=AVX2 on an AVX2-only CPU; the
MKL_ENABLE_INSTRUCTIONS cap on AMD, where MKL already takes its generic path), it changes nothing.
Exits 1 if all the variables together change nothing, since the second pass would then repeat the
first.
"""

import json
import os
import subprocess
import sys

from benchmarks.measure import machine

PROBE = """
import hashlib, json, torch
torch.manual_seed(0)
a, b = torch.randn(257, 576), torch.randn(576, 1031)
q = torch.randn(1, 9, 257, 64)
def bits(tensor):
    return hashlib.sha1(tensor.float().contiguous().numpy().tobytes()).hexdigest()[:12]
print(json.dumps({
    "ATen capability": torch.backends.cpu.get_cpu_capability(),
    "float32 matmul": bits(a @ b),
    "bf16 matmul": bits(a.bfloat16() @ b.bfloat16()),
    "softmax": bits(torch.softmax(a @ b, dim=-1)),
    "logsumexp": bits(torch.logsumexp(a @ b, dim=-1)),
    "float32 attention": bits(torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)),
}))
"""


def probe(variables: dict[str, str]) -> dict[str, str]:
    environment = {**os.environ, **variables}
    output = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main(arguments: list[str]) -> int:
    variables = dict(argument.split("=", 1) for argument in arguments)
    reference = probe({})
    print(f"CPU: {machine()['cpu']}; ATen capability without the variables: {reference['ATen capability']}")
    runs = [({name: value}, f"{name}={value}") for name, value in variables.items()]
    changed_by_all = []
    for setting, label in [*runs, (variables, "all together")]:
        result = probe(setting)
        changed = [name for name in reference if result[name] != reference[name]]
        print(f"  {label}: {', '.join(changed) if changed else 'nothing changed'}")
        changed_by_all = changed
    return 0 if changed_by_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
