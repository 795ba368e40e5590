"""The trainer's CUDA path (nf4 + LoRA, gradient checkpointing, chunked log-probabilities, one loss
step, the adapter's bytes) on a small model built from a config: ``scripts/gpu_check.py``, which
also runs alone on a bare GPU machine. Skipped without CUDA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_the_trainers_cuda_path_passes_every_check():
    script = Path(__file__).parent.parent / "scripts" / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout)
    failed = [name for name, check in report["checks"].items() if not check["passed"]]
    assert result.returncode == 0 and not failed, (failed, result.stderr[-3000:])
