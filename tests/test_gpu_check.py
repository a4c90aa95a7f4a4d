"""tools/gpu_check.sh keeps working without a GPU: its dry run checks the wheelhouse pins, the `cuda` test selection
and the profile command lines; the real run on a machine without CUDA says so in one line and exits 0."""
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"


def test_the_dry_run_passes():
    res = subprocess.run([str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "dry run: ok" in res.stdout and "cuda tests: " in res.stdout
    assert res.stdout.count("command ok: zest-edge profile") == 2


def test_without_cuda_it_says_so_in_one_line():
    if torch.cuda.is_available():
        return                                          # on a GPU machine the real run is tools/gpu_check.sh itself
    res = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert res.returncode == 0 and res.stdout.count("\n") == 1 and "no CUDA GPU here" in res.stdout
