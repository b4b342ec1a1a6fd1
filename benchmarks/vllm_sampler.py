"""vLLM's rejection_sample against the plugin's, the function alone, same inputs, same run.

In the vLLM venv, from the repository root, on an otherwise idle machine:

    .venv-vllm/bin/python -P benchmarks/vllm_sampler.py          # -> benchmarks/results/vllm-sampler-...csv
    .venv-vllm/bin/python -P benchmarks/vllm_sampler.py --quick  # smoke run, a temporary CSV

An engine's tokens/s (benchmarks/vllm_cpu.py) mostly measures the model forwards; this measures what
the plugin replaces: ``vllm.v1.sample.rejection_sampler.rejection_sample`` as vllm-cpu 0.32 runs it
on the CPU (its C++ fallbacks for the Triton kernels, registered as vLLM's CPU worker does) and
``specdec.vllm.verify.rejection_sample`` (specdec_kernels' cpu backend), called alternately on the
same inputs: the target logits after temperature (what vLLM passes in), K = 4 drafts per request,
V = 49152 (SmolLM2's vocabulary), greedy rows, sampled rows with deterministic drafts (vLLM's
default drafter) and sampled rows with draft probabilities (``draft_sample_method="probabilistic"``).
Reported: the median of ``--reps`` timings, each the mean over ``--calls`` calls, in microseconds.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from record import git_commit, slug  # noqa: E402


def _inputs(batch: int, k: int, vocab: int, mode: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch * k, vocab, generator=g) * 2.0
    q = torch.softmax(logits + torch.randn(batch * k, vocab, generator=g), -1)
    drafts = torch.multinomial(q, 1, generator=g).view(-1).to(torch.int32)
    greedy = mode == "greedy"
    metadata = SimpleNamespace(
        all_greedy=greedy, all_random=not greedy, generators={},
        temperature=None if greedy else torch.ones(batch),
    )  # fmt: skip
    return dict(
        draft_token_ids=drafts, num_draft_tokens=[k] * batch, max_spec_len=k,
        cu_num_draft_tokens=torch.arange(1, batch + 1, dtype=torch.int32) * k,
        draft_probs=q if mode == "sampled_q" else None, target_logits=logits,
        bonus_token_ids=torch.randint(0, vocab, (batch, 1), generator=g), sampling_metadata=metadata,
    )  # fmt: skip


def _time(fn, kwargs: dict, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(**kwargs)
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.reps, args.calls = "1,8", 2, 3

    import vllm
    from specdec.vllm import verify
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler as rs

    import specdec_kernels as sk

    current_platform.register_triton_kernel_overrides()  # what vLLM's CPU worker does first
    ours = verify.rejection_sample
    theirs = rs.rejection_sample  # the plugin is not activated in this process

    commit = git_commit(ROOT)
    cpu = platform.processor()
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    date = datetime.date.today().isoformat()
    device = slug(" ".join(cpu.split()[:2]) + f" {os.cpu_count()} cpus")
    out = args.out or (tempfile.mktemp(suffix=".csv", prefix="vllm-sampler-") if args.quick else os.path.join(
        HERE, "results", f"vllm-sampler-{device}-{date}-{commit}.csv"))
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for mode in ("greedy", "sampled", "sampled_q"):
            kw = _inputs(batch, args.k, args.vocab, mode)
            # Warm up both: first calls load kernels, and the first large allocations of a shape
            # are fresh mmap'd pages (page faults) until glibc raises its mmap threshold.
            for _ in range(3):
                for fn in (ours, theirs):
                    fn(**kw)
            t = {"vllm": [], "specdec": []}
            for _ in range(args.reps):
                t["vllm"].append(_time(theirs, kw, args.calls))
                t["specdec"].append(_time(ours, kw, args.calls))
            med = {name: statistics.median(v) for name, v in t.items()}
            row = {
                "batch": batch, "k": args.k, "vocab": args.vocab, "mode": mode,
                "vllm_us": f"{med['vllm']:.1f}", "specdec_us": f"{med['specdec']:.1f}",
                "speedup": f"{med['vllm'] / med['specdec']:.2f}",
                "vllm_reps_us": " ".join(f"{x:.1f}" for x in t["vllm"]),
                "specdec_reps_us": " ".join(f"{x:.1f}" for x in t["specdec"]),
                "torch_threads": torch.get_num_threads(), "vllm": vllm.__version__,
                "torch": torch.__version__,
                "specdec_backend": sk.backends()[-1], "device": f"{cpu} ({os.cpu_count()} cpus)",
                "date": date, "commit": commit,
            }  # fmt: skip
            rows.append(row)
            print(f"B={batch:3d} {mode:9s}  vLLM {row['vllm_us']:>9s} us   specdec {row['specdec_us']:>9s} us"
                  f"   ({row['speedup']}x)", flush=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
