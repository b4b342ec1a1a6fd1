"""Smoke test of benchmarks/block_verify.py: ``--quick`` through ``main()`` in this process, every
section, then the CSV it wrote (columns, both rules, finite ratios) and the markdown read back from
it. Seconds, not a measurement."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import sys

import pytest

import specdec_kernels as sk

HERE = os.path.dirname(os.path.abspath(__file__))


def _script():
    name = "specdec_bench_block_verify"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "block_verify.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.mark.skipif("cpu" not in sk.backends("cpu"), reason="specdec_kernels._C (cpu backend) not built")
def test_quick_run_writes_every_section(tmp_path, capsys) -> None:
    bv = _script()
    out = tmp_path / "quick.csv"
    assert bv.main(["--quick", "--sections", "time", "synthetic", "lab", "trees", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bv.COLUMNS
    assert {r["section"] for r in rows} == {"time", "synthetic", "lab", "trees"}
    assert len([r for r in rows if r["section"] == "time"]) == 4  # {stochastic, deterministic} x check
    assert len([r for r in rows if r["section"] == "synthetic"]) == 6  # 2 temperatures x 3 drafters
    for r in rows:
        assert math.isfinite(float(r["ratio"])) and float(r["token"]) > 0 and float(r["block"]) > 0
    capsys.readouterr()
    assert bv.main(["--markdown", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| case |" in text and "**synthetic**" in text and "**lab**" in text
