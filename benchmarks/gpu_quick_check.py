"""Quick GPU check used in the first H100 session: every CUDA-capable backend named on the command
line against the reference (exact for the chain ops, allclose for sampling_probs) on odd sizes and
all dtypes, then CUDA-graph timings (median of 30 replays of 20 calls) next to a device copy.

    PYTHONPATH=. python3 benchmarks/gpu_quick_check.py cuda [triton]
    PYTHONPATH=. python3 benchmarks/gpu_quick_check.py --device cpu cpu   # the checks only, on CPU

Its logs from 2026-11-22 are in benchmarks/results/nvidia-h100-2026-11-22-quick-check.log (taken
before its inputs, comparisons, byte counts and graph timing moved to specdec_kernels.testing: the
inputs are now the suite's realistic rows, and GB/s counts the bytes of ``chain_bytes``). The
pytest benchmarks (benchmarks/gpu_session.sh) are the reference numbers; this is the fast look.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference as ref

# (B, K, V) of the chain checks and (rows, V) of the sampling_probs checks: edge sizes (no draft,
# V = 1, K > V) next to real vocabularies.
CHAIN_SHAPES = [(1, 0, 1), (3, 1, 7), (33, 5, 111), (3, 5, 32000), (16, 5, 32000), (7, 8, 128256),
                (5, 40, 50)]
ROW_SHAPES = [(1, 1), (5, 7), (33, 111), (12, 32000), (3, 128256)]
TIME_SHAPES = [(1, 5, 32000), (16, 5, 32000), (64, 5, 32000), (16, 8, 128256), (64, 8, 128256)]
SAMPLING_KWS: list[dict[str, Any]] = [
    {},
    {"temperature": 0.7},
    {"top_k": 5},
    {"top_p": 0.8},
    {"temperature": 1.3, "top_k": 20, "top_p": 0.6},
]


def _mismatch(what: str, got: Any, want: Any, *context: Any, **tol: float) -> int:
    """1 (and the difference printed) when ``got`` is not ``want``, else 0: report every case."""
    try:
        skt.assert_same(got, want, name=what, **tol)
    except AssertionError as e:
        print("MISMATCH", *context, e)
        return 1
    return 0


def check_chain_ops(backend: str, dev: str) -> int:
    """verify_chain (draft probs or None, num_draft or not, an int seed or a seed tensor) and
    verify_chain_greedy against the reference; returns the number of mismatches."""
    fails = 0
    for i, (B, K, V) in enumerate(CHAIN_SHAPES):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            inp = skt.make_chain_inputs("cpu", B, K, V, dtype, seed=i)
            x, p, q = inp.x, inp.p, inp.q
            nd = torch.randint(0, K + 1, (B,))
            xp = x.clone()
            for b in range(B):
                xp[b, nd[b]:] = -1
            for dq in (q, None):
                for n, xx in ((None, x), (nd, xp)):
                    for seed in (123, torch.randint(0, 2**62, (B,))):
                        r = ref.verify_chain(xx, p, dq, num_draft=n, seed=seed, offset=4)
                        g = sk.verify_chain(*skt.to_device((xx, p, dq), dev), num_draft=skt.to_device(n, dev),
                                            seed=skt.to_device(seed, dev), offset=4)
                        fails += _mismatch("verify_chain", g, r, backend, B, K, V, dtype,
                                           f"draft_probs={'None' if dq is None else 'q'}",
                                           f"num_draft={'None' if n is None else 'ragged'}")
            lg3 = skt.make_logits("cpu", (B, K + 1, V), dtype, seed=i)
            xg = lg3[:, :K].float().argmax(-1)
            if K:
                xg[::2, K // 2] = (xg[::2, K // 2] + 1) % V  # mismatches in every other request
            for n in (None, nd):
                r = ref.verify_chain_greedy(xg, lg3, num_draft=n)
                g = sk.verify_chain_greedy(*skt.to_device((xg, lg3), dev), num_draft=skt.to_device(n, dev))
                fails += _mismatch("verify_chain_greedy", g, r, backend, B, K, V, dtype)
    return fails


def check_sampling_probs(backend: str, dev: str) -> int:
    """sampling_probs with scalar and per-row parameters, a third of a row at -inf, against the
    reference within rtol 1e-5, atol 1e-7; returns the number of mismatches."""
    fails = 0
    for i, (R, V) in enumerate(ROW_SHAPES):
        for dtype in (torch.float32, torch.bfloat16):
            lg = skt.make_logits("cpu", (R, V), dtype, seed=100 + i)
            if V > 3:
                lg[0, : V // 3] = float("-inf")
            per_row = {"top_k": torch.randint(0, V + 3, (R,)), "top_p": torch.rand(R) * 0.9 + 0.1}
            for kw in [*SAMPLING_KWS, per_row]:
                a = ref.sampling_probs(lg, **kw)
                b = sk.sampling_probs(lg.to(dev), **skt.to_device(kw, dev))
                fails += _mismatch("sampling_probs", b, a, backend, R, V, dtype, list(kw),
                                   rtol=1e-5, atol=1e-7)
    return fails


def copy_gbps() -> float:
    """Device-to-device copy bandwidth of 512 MiB (read + write), the yardstick of the GB/s column."""
    buf = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    buf2 = torch.empty_like(buf)
    copy_us = skt.graph_median_us(lambda: buf2.copy_(buf), calls=5, reps=10)
    return 2 * buf.numel() / copy_us / 1e3


def time_case(B: int, K: int, V: int, copy_gbps: float) -> str:
    """CUDA-graph timings of verify_chain, verify_chain_greedy and sampling_probs at one shape."""
    inp = skt.make_chain_inputs("cuda", B, K, V, "float32")
    x, p, q, z, seed, off = inp.x, inp.p, inp.q, inp.z, inp.seed, inp.offset
    r = sk.verify_chain(x, p, q, seed=seed, offset=off, check=False)
    nbytes = skt.chain_bytes(r.num_accepted, K, V, "float32", draft_probs=True)
    t = skt.graph_median_us(lambda: sk.verify_chain(x, p, q, seed=seed, offset=off, check=False))
    flat = z.reshape(B * (K + 1), V)
    tg = skt.graph_median_us(lambda: sk.verify_chain_greedy(x, z, check=False))
    ts = skt.graph_median_us(lambda: sk.sampling_probs(flat, temperature=0.8, top_k=50, top_p=0.9,
                                                       check=False))
    ts0 = skt.graph_median_us(lambda: sk.sampling_probs(flat, temperature=0.8, check=False))
    gbps = nbytes / t / 1e3
    return (f"B={B:3d} K={K} V={V:6d}: verify_chain {t:7.2f} us ({gbps:6.0f} GB/s = "
            f"{100 * gbps / copy_gbps:4.1f}% copy)  greedy {tg:7.2f} us  "
            f"sampling_probs(topk+topp) {ts:8.2f} us  (T only) {ts0:8.2f} us "
            f"({skt.sampling_bytes(flat.shape[0], V, 'float32') / ts0 / 1e3:.0f} GB/s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backends", nargs="+", help="backends to check (and, on CUDA, time)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="device of the checked calls; timings need cuda (default)")
    args = ap.parse_args(argv)
    dev = args.device
    print(f"backends {dev}:", sk.backends(dev), sk._backend.cpp_status())
    fails = 0
    for backend in args.backends:
        torch.manual_seed(0)  # num_draft, seed tensors and per-row parameters: the same per backend
        with sk.use_backend(backend):
            fails += check_chain_ops(backend, dev) + check_sampling_probs(backend, dev)
    print("FAILS", fails)
    if dev != "cuda":
        return 1 if fails else 0

    copy = copy_gbps()
    print(f"copy {copy:.0f} GB/s")
    for backend in args.backends:
        with sk.use_backend(backend):
            for B, K, V in TIME_SHAPES:
                print(f"{backend:7s} {time_case(B, K, V, copy)}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
