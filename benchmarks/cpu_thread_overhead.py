"""Why short CPU calls scale below 2x on 2 threads: the fixed per-call cost does not parallelise.

    python benchmarks/cpu_thread_overhead.py [--out benchmarks/results/FILE.txt]

Times verify_chain_greedy and verify_chain at B=8, K=5, V=32000 (the benchmark inputs of
benchmarks/conftest.py) and an empty verify_chain_greedy call (the fixed cost: Python checks,
dispatch, allocation), alternating 1 and 2 torch threads call by call so that load from other
processes hits both alike; medians of 200 calls each. With a fixed cost f and a call of t on one
thread, 2 threads give at best t / (f + (t - f) / 2).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

import specdec_kernels as sk


def _cpu_speed():
    # benchmarks/ is no package, and under pytest the name `conftest` may be another directory's:
    # cpu_speed.py loads benchmarks/conftest.py and record.py by path; use its modules.
    name = "specdec_bench_cpu_speed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_speed.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


_speed = _cpu_speed()
bench, record = _speed.bench, _speed.record


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the report to this text file")
    args = ap.parse_args(argv)
    inp = bench.make_inputs("cpu", 8, 5, 32000, "float32")
    empty_z = inp.z[:, :1, :8].contiguous()
    calls = {
        "verify_chain_greedy B=8": lambda: sk.verify_chain_greedy(inp.x, inp.z, check=False),
        "verify_chain B=8": lambda: sk.verify_chain(inp.x, inp.p, inp.q, seed=inp.seed, offset=inp.offset,
                                                    check=False),
        "empty verify_chain_greedy (K=0, V=8)": lambda: sk.verify_chain_greedy(inp.x[:, :0], empty_z,
                                                                               check=False),
    }
    old = torch.get_num_threads()
    lines = [f"# {bench.device_name('cpu')}, torch {torch.__version__}, commit {record.git_commit()}, "
             f"cpu kernels {sk._backend.CPU_SIMD_LEVELS[sk.cpu_simd_level()]}"]
    try:
        for name, fn in calls.items():
            times: dict[int, list[float]] = {1: [], 2: []}
            for rep in range(400):
                threads = 1 + rep % 2
                torch.set_num_threads(threads)
                t = time.perf_counter()
                fn()
                times[threads].append(time.perf_counter() - t)
            one, two = (statistics.median(times[n]) * 1e6 for n in (1, 2))
            lines.append(f"{name}: 1 thread {one:.1f} us, 2 threads {two:.1f} us, speed-up {one / two:.2f}")
    finally:
        torch.set_num_threads(old)
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return report


if __name__ == "__main__":
    main()
