"""Smoke test of benchmarks/cpu_speed.py (issue 15's yardstick): ``--quick`` on two ops through
``main()`` in this process, then the CSV it wrote: the columns, every goal present, finite ratios,
and the markdown summary printed back from the file. Seconds, not a measurement."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import sys
import types

import pytest

import specdec_kernels as sk

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIRED = ["date", "commit", "device", "torch", "goal", "op", "variant", "B", "V", "dtype", "threads",
            "median_us", "bytes", "copy_gbps", "ratio", "target", "pass"]


def _cpu_speed() -> types.ModuleType:
    # benchmarks/ is no package: import the script by path (it finds conftest.py the same way)
    if "specdec_bench_cpu_speed" not in sys.modules:
        spec = importlib.util.spec_from_file_location("specdec_bench_cpu_speed",
                                                      os.path.join(HERE, "cpu_speed.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["specdec_bench_cpu_speed"]


@pytest.mark.skipif("cpu" not in sk.backends("cpu"), reason="specdec_kernels._C (cpu backend) not built")
def test_quick_run_writes_a_complete_csv(tmp_path, capsys) -> None:
    cs = _cpu_speed()
    out = tmp_path / "quick.csv"
    # verify_chain: two variants, a check argument; draft_entropy: also goal 3's reference side
    assert cs.main(["--quick", "--ops", "verify_chain,draft_entropy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert set(REQUIRED) <= set(reader.fieldnames or [])
    copies = [r for r in rows if r["goal"] == "copy"]
    ops = [r for r in rows if r["goal"] != "copy"]
    assert len(copies) == 3 and all(float(r["gbps"]) > 0 for r in copies)  # start, clone, end
    assert {r["op"] for r in ops} == {"verify_chain", "draft_entropy"}
    # goal 1 per op variant, goal 2 (check) for each, goal 3 (reference) for draft_entropy, goal 4 each
    assert sorted(r["goal"] for r in ops) == sorted(["1"] * 3 + ["2"] * 3 + ["3"] + ["4"] * 3)
    for r in ops:
        assert math.isfinite(float(r["ratio"])) and float(r["ratio"]) > 0, r
        assert float(r["median_us"]) > 0 and int(r["bytes"]) > 0, r
        assert r["pass"] in ("yes", "no") and r["target"][:2] in ("<=", ">="), r
        assert r["copy_gbps"] == rows[0]["copy_gbps"] and r["device"] and r["commit"], r
    assert {r["threads"] for r in ops if r["goal"] == "4"} == {"2"}
    # the summary printed by the run is the one re-printed from the file (tables come from files)
    assert cs.markdown(str(out)) == printed
    for goal in ("Goal 1", "Goal 2", "Goal 3", "Goal 4"):
        assert goal in printed


def test_thread_overhead_report(tmp_path) -> None:
    """benchmarks/cpu_thread_overhead.py runs and reports the three calls with a speed-up each."""
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    spec = importlib.util.spec_from_file_location("specdec_bench_thread_overhead",
                                                  os.path.join(HERE, "cpu_thread_overhead.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "report.txt"
    report = mod.main(["--out", str(out)])
    lines = out.read_text().strip().splitlines()
    assert lines == report.splitlines() and len(lines) == 4
    for line in lines[1:]:
        speedup = float(line.rsplit("speed-up ", 1)[1])
        assert math.isfinite(speedup) and speedup > 0
