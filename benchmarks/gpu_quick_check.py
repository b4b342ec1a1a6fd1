"""Quick GPU check used in the first H100 session: every CUDA-capable backend named on the command
line against the reference (exact for the chain ops, allclose for sampling_probs) on odd sizes and
all dtypes, then CUDA-graph timings (median of 30 replays of 20 calls) next to a device copy.

    PYTHONPATH=. python3 benchmarks/gpu_quick_check.py cuda [triton]

Its logs from 2026-11-22 are in benchmarks/results/nvidia-h100-2026-11-22-quick-check.log. The
pytest benchmarks (benchmarks/gpu_session.sh) are the reference numbers; this is the fast look.
"""

import sys

import torch
from conftest import _graph  # benchmarks/conftest.py: this script runs from benchmarks/

import specdec_kernels as sk
from specdec_kernels import reference as ref

print("backends cuda:", sk.backends("cuda"), sk._backend.cpp_status())
dev = "cuda"
torch.manual_seed(0)
fails = 0


def mk(B, K, V, dtype, sharp=2.0):
    z = torch.randn(B, K + 1, V) * sharp
    p = torch.softmax(z, -1)
    q = torch.softmax(z[:, :K] + 0.7 * torch.randn(B, K, V), -1)
    x = torch.multinomial(q.reshape(-1, V), 1).reshape(B, K) if K else torch.zeros(B, 0, dtype=torch.long)
    return x, p.to(dtype), q.to(dtype)


for backend in sys.argv[1:]:
    with sk.use_backend(backend):
        for B, K, V in [
            (1, 0, 1),
            (3, 1, 7),
            (33, 5, 111),
            (3, 5, 32000),
            (16, 5, 32000),
            (7, 8, 128256),
            (5, 40, 50),
        ]:
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                x, p, q = mk(B, K, V, dtype)
                nd = torch.randint(0, K + 1, (B,))
                xp = x.clone()
                for b in range(B):
                    xp[b, nd[b] :] = -1
                for dq in (q, None):
                    for n, xx in ((None, x), (nd, xp)):
                        for seed in (123, torch.randint(0, 2**62, (B,))):
                            r = ref.verify_chain(xx, p, dq, num_draft=n, seed=seed, offset=4)
                            g = sk.verify_chain(
                                xx.to(dev),
                                p.to(dev),
                                None if dq is None else dq.to(dev),
                                num_draft=None if n is None else n.to(dev),
                                seed=seed if isinstance(seed, int) else seed.to(dev),
                                offset=4,
                            )
                            ok = torch.equal(r.tokens, g.tokens.cpu()) and torch.equal(
                                r.num_accepted, g.num_accepted.cpu()
                            )
                            if not ok:
                                fails += 1
                                print(
                                    "MISMATCH verify_chain",
                                    backend,
                                    B,
                                    K,
                                    V,
                                    dtype,
                                    dq is None,
                                    n is not None,
                                    (r.tokens != g.tokens.cpu()).sum().item(),
                                    (r.num_accepted != g.num_accepted.cpu()).sum().item(),
                                )
                lg3 = torch.randn(B, K + 1, V).to(dtype)
                xg = lg3[:, :K].float().argmax(-1)
                if K:
                    xg[::2, K // 2] = (xg[::2, K // 2] + 1) % V
                for n in (None, nd):
                    r = ref.verify_chain_greedy(xg, lg3, num_draft=n)
                    g = sk.verify_chain_greedy(
                        xg.to(dev), lg3.to(dev), num_draft=None if n is None else n.to(dev)
                    )
                    if not (
                        torch.equal(r.tokens, g.tokens.cpu())
                        and torch.equal(r.num_accepted, g.num_accepted.cpu())
                    ):
                        fails += 1
                        print("MISMATCH greedy", backend, B, K, V, dtype)
        for R, V in [(1, 1), (5, 7), (33, 111), (12, 32000), (3, 128256)]:
            for dtype in (torch.float32, torch.bfloat16):
                lg = (torch.randn(R, V) * 3).to(dtype)
                lg[0, : V // 3] = float("-inf") if V > 3 else lg[0, : V // 3]
                for kw in [
                    dict(),
                    dict(temperature=0.7),
                    dict(top_k=5),
                    dict(top_p=0.8),
                    dict(temperature=1.3, top_k=20, top_p=0.6),
                    dict(top_k=torch.randint(0, V + 3, (R,)), top_p=torch.rand(R) * 0.9 + 0.1),
                ]:
                    a = ref.sampling_probs(lg, **kw)
                    kw2 = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
                    b = sk.sampling_probs(lg.to(dev), **kw2).cpu()
                    if not torch.allclose(a, b, rtol=1e-5, atol=1e-7):
                        fails += 1
                        print(
                            "MISMATCH sampling_probs",
                            backend,
                            R,
                            V,
                            dtype,
                            list(kw),
                            (a - b).abs().max().item(),
                            ((a > 0) != (b > 0)).sum().item(),
                        )
print("FAILS", fails)


# timing: CUDA graph of 20 calls, captured the way the pytest benchmarks capture them
def bench(fn, n=20, reps=30):
    g, _ = _graph(fn, n)
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) * 1000 / n)
    ts.sort()
    return ts[len(ts) // 2]


buf = torch.empty(512 * 2**20, dtype=torch.uint8, device=dev)
buf2 = torch.empty_like(buf)
copy_us = bench(lambda: buf2.copy_(buf), n=5, reps=10)
copy_gbps = 2 * buf.numel() / copy_us / 1e3
print(f"copy {copy_gbps:.0f} GB/s")


def time_case(B: int, K: int, V: int) -> str:
    x, p, q = mk(B, K, V, torch.float32)
    x, p, q = x.to(dev), p.to(dev), q.to(dev)
    seed = torch.randint(0, 2**62, (B,), device=dev)
    off = torch.zeros((), dtype=torch.long, device=dev)
    r = sk.verify_chain(x, p, q, seed=seed, offset=off, check=False)
    # must-move bytes: drafts, 2 scalars per accepted draft, one row of p (and of q when rejected),
    # outputs
    na = r.num_accepted.cpu()
    rej = (na < K).sum().item()
    nbytes = B * K * 8 + int(na.sum()) * 8 + B * V * 4 + rej * V * 4 + B * (K + 2) * 8
    t = bench(lambda: sk.verify_chain(x, p, q, seed=seed, offset=off, check=False))
    logits = p.log()
    flat = logits.reshape(B * (K + 1), V)
    tg = bench(lambda: sk.verify_chain_greedy(x, logits, check=False))
    ts = bench(lambda: sk.sampling_probs(flat, temperature=0.8, top_k=50, top_p=0.9, check=False))
    ts0 = bench(lambda: sk.sampling_probs(flat, temperature=0.8, check=False))
    gbps = nbytes / t / 1e3
    return (f"B={B:3d} K={K} V={V:6d}: verify_chain {t:7.2f} us ({gbps:6.0f} GB/s = "
            f"{100 * gbps / copy_gbps:4.1f}% copy)  greedy {tg:7.2f} us  "
            f"sampling_probs(topk+topp) {ts:8.2f} us  (T only) {ts0:8.2f} us "
            f"({2 * flat.numel() * 4 / ts0 / 1e3:.0f} GB/s)")


for backend in sys.argv[1:]:
    with sk.use_backend(backend):
        for B, K, V in [(1, 5, 32000), (16, 5, 32000), (64, 5, 32000), (16, 8, 128256), (64, 8, 128256)]:
            print(f"{backend:7s} {time_case(B, K, V)}")
