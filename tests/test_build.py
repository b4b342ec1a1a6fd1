"""setup.py's build switches: a bad SPECDEC_CUDA value is refused with a message naming it, before
anything is built or written (specdec_kernels/_build_info.py is left as the real build wrote it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bad_specdec_cuda_value_is_refused():
    info = ROOT / "specdec_kernels" / "_build_info.py"
    before = info.read_bytes() if info.exists() else None
    env = {**os.environ, "SPECDEC_CUDA": "yes-please"}
    env.pop("SPECDEC_NO_CUDA", None)
    r = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "SPECDEC_CUDA must be auto, 0 or 1, got 'yes-please'" in r.stderr + r.stdout
    assert (info.read_bytes() if info.exists() else None) == before
