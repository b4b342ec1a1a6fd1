"""The vLLM benchmark scripts still run (tiny sizes, a temporary CSV): a script that stops working
fails CI, as the main suite does for the other benchmarks. Their figures come from full runs on an
idle machine (docs/benchmarks.md), never from here."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    plugin_vars = ("SPECDEC_VLLM", "SPECDEC_VLLM_RULE", "VLLM_PLUGINS")
    return {k: v for k, v in os.environ.items() if k not in plugin_vars}


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-P", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def test_vllm_sampler_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "sampler.csv"
    _run(["benchmarks/vllm_sampler.py", "--quick", "--out", str(out)], 300)
    rows = list(csv.DictReader(out.open()))
    assert {r["mode"] for r in rows} == {"greedy", "sampled", "sampled_q"}
    assert all(float(r["vllm_us"]) > 0 and float(r["specdec_us"]) > 0 for r in rows)


@pytest.mark.e2e
def test_vllm_cpu_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "engine.csv"
    _run(["benchmarks/vllm_cpu.py", "--quick", "--configs", "token", "--in-process", "--out", str(out)], 600)
    rows = list(csv.DictReader(out.open()))
    assert [r["config"] for r in rows] == ["token", "token"]  # T=0 and the sampled temperature
    assert all(float(r["tokens_per_s_median"]) > 0 and int(r["num_drafts"]) > 0 for r in rows)
