"""The GPU decoder benchmark (benchmarks/decoder_overhead.py) runs end to end at its tiny shape, so
the script a lent GPU runs is known to work before the GPU is there."""

from __future__ import annotations

import importlib.util
import os

import pytest

pytest.importorskip("transformers")

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "decoder_overhead.py")


def test_decoder_overhead_script_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("decoder_overhead", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "decoder.csv"
    rows = mod.main(
        ["--shape", "tiny", "--device", "cpu", "--repeats", "1", "--temperatures", "0.7", "--out", str(out)]
    )
    assert len(rows) == len(mod.CASES)
    text = out.read_text().splitlines()
    assert text[0].startswith("device,") and len(text) == len(mod.CASES) + 1
    ar = rows[0]
    assert ar["method"] == "ar" and ar["tau"] == 1.0 and ar["speedup"] == 1.0
    for r in rows:
        assert r["new_tokens"] == mod.SHAPES["tiny"]["new_tokens"]
        assert 1.0 <= r["tau"] <= 1 + 5  # at most the deepest draft (5) plus one
        assert r["overhead_ms_per_round"] >= 0 and r["target_forward_ms"] > 0
