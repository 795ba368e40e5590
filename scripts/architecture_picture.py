"""Draw docs/architecture.png: the services, the trainer's parts and ranks, what crosses each arrow.

    .venv/bin/python scripts/architecture_picture.py      # writes docs/architecture.png

A picture made by a script rather than by hand, so that it changes with a commit like the code it
shows; it renders the same on GitHub and on the documentation site.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "architecture.png"
SERVER, TRAINER, STORE = "#dbe8f5", "#e3f1df", "#f3f0e6"


def box(axis, x, y, width, height, title, lines, colour, dashed=False):
    axis.add_patch(
        FancyBboxPatch(
            (x, y), width, height, boxstyle="round,pad=0.02,rounding_size=0.15", facecolor=colour,
            edgecolor="#555555", linestyle="--" if dashed else "-", linewidth=1.2,
        )
    )  # fmt: skip
    axis.text(x + 0.15, y + height - 0.3, title, fontsize=10.5, fontweight="bold", va="top")
    for index, line in enumerate(lines):
        axis.text(x + 0.15, y + height - 0.85 - 0.42 * index, line, fontsize=8.5, va="top", family="monospace")


def arrow(axis, start, end, label, offset=(0.0, 0.18), both=False, colour="#333333"):
    axis.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle="<|-|>" if both else "-|>", mutation_scale=14, color=colour, linewidth=1.3,
        )
    )  # fmt: skip
    middle = ((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1])
    axis.text(*middle, label, fontsize=8, ha="center", va="bottom", color=colour)


def main() -> None:
    figure, axis = plt.subplots(figsize=(15, 8.6))
    axis.set_xlim(0, 30)
    axis.set_ylim(0, 17)
    axis.axis("off")

    box(axis, 0.5, 8.2, 10.5, 7.8, "trainer, rank 0  (grpo-math train)", [
        "4-bit nf4 base + LoRA r16 (q, v)",
        "train_step: sample → score → advantages",
        "  → loss → AdamW → push → log",
        "Batches / producer: samples ahead",
        "  with --max-staleness S",
        "pool: the groups of a step split",
        "  across the servers; a lost one",
        "  rechecked and pushed to again",
        "AdapterSync: numbers each version,",
        "  pushes it, proves it was applied",
        "  (--max-sampler-gap)",
    ], TRAINER)  # fmt: skip
    box(axis, 0.5, 0.6, 10.5, 5.6, "trainer ranks 1 … R−1  (torchrun / accelerate launch)", [
        "the same policy and loop, no server:",
        "each trains its share of the batch",
        "(sequences split by tokens);",
        "LoRA gradients summed once a step",
        "(torch.distributed: gloo on CPU,",
        "NCCL on GPU), the same AdamW step",
    ], TRAINER, dashed=True)  # fmt: skip
    box(axis, 18.5, 9.2, 11.0, 6.8, "generator server  (grpo-math serve)", [
        "FastAPI routes → engine → vLLM AsyncLLM",
        "groups: n completions per prompt,",
        "  sampler logprobs after temperature",
        "lora mode: each version a vLLM LoRA",
        "merge mode: the version asked for",
        "  merged into the weights, reloaded",
        "one version rule: every push > all",
        "  before; the last good one serves on",
    ], SERVER)  # fmt: skip
    box(axis, 18.5, 4.9, 11.0, 3.2, "more servers  (--server-url A B …)", [
        "each gets every adapter; a step's",
        "groups split between them",
    ], SERVER, dashed=True)  # fmt: skip
    box(axis, 18.5, 0.6, 11.0, 3.2, "or, in their place, vLLM's own server", [
        "vllm serve / trl vllm-serve --enable-lora:",
        "the same groups; adapters written to a",
        "shared folder and loaded by name",
    ], SERVER, dashed=True)  # fmt: skip
    box(axis, 12.0, 0.6, 5.6, 4.6, "run folder", [
        "settings.json",
        "metrics.jsonl",
        "checkpoints/",
        "final/ (PEFT)",
        "trackio store",
        "(dashboard :7860)",
    ], STORE)  # fmt: skip

    generate = "POST /v1/generate\n{prompts, n, max_tokens, temperature,\nadapter_version}"
    groups = "groups: token ids, sampler logprobs,\ntext, the version that sampled them"
    adapters = 'POST /v1/adapters  (PEFT safetensors\nbytes, version "next") → version k'
    arrow(axis, (11.1, 14.2), (18.4, 14.2), generate)
    arrow(axis, (18.4, 12.6), (11.1, 12.6), groups, offset=(0.0, -1.0))
    arrow(axis, (11.1, 10.4), (18.4, 10.4), adapters, offset=(0.0, -1.05))
    arrow(axis, (11.1, 9.0), (18.4, 6.6), "the same, to each server", offset=(2.6, 0.05), colour="#666666")
    arrow(axis, (4.0, 8.1), (4.0, 6.3), "the step's batch (broadcast)", offset=(2.2, -0.15))
    arrow(axis, (8.0, 6.3), (8.0, 8.1), "all-reduce: summed\nLoRA gradients", offset=(1.7, -0.35), both=True)
    arrow(axis, (11.1, 8.9), (14.0, 5.3), "metrics rows,\ncheckpoints", offset=(1.4, -0.6), colour="#7a6a3a")
    axis.text(
        15.0, 16.55, "Only JSON and the adapter's bytes cross between the services: no shared disk, no NCCL between "
        "trainer and server, no restart. docker compose runs one server (GPU 0) and the trainer (GPU 1).",
        fontsize=9, ha="center", style="italic",
    )  # fmt: skip
    figure.tight_layout()
    figure.savefig(OUTPUT, dpi=110)
    print(OUTPUT)


if __name__ == "__main__":
    main()
