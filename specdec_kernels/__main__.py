"""``python -m specdec_kernels``: what is installed, a self-check of every backend against the
reference, and a timing table.

    python -m specdec_kernels [--device cpu|cuda] [--quick]

Exit status 1 when any check (or timed call) fails, 2 on a usage error. Triton runs on CPU
tensors only when TRITON_INTERPRET=1 was set before the import; this command reports what is
available and never sets it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import _backend, reference

# Timing-table shape: the fixed case.
TIME_B, TIME_K, TIME_V = 8, 5, 32000
SAMPLING_KW: dict[str, Any] = {"temperature": 0.8, "top_k": 50, "top_p": 0.9}
OPS = ("verify_chain", "verify_chain[draft_probs=None]", "verify_chain_greedy", "sampling_probs",
       "gumbel_topk", "stochastic_beam_step", "verify_tree", "verify_tree[draft_probs=None]",
       "verify_tree_greedy", "tree_attention_mask", "tree_position_ids", "draft_entropy")
# Sampling without replacement: k tokens per row of the [B * (K+1), V] logits; one SBS step with
# the K+1 rows of a request as its beams.
TOPK_K = 4


def make_case(B: int, K: int, V: int, device: torch.device, ragged: bool, seed: int = 0) -> dict[str, Any]:
    """Chain inputs where rejections happen at various positions, and a tree (a binary heap of K+1
    nodes, siblings distinct draws from a noisy draft row) over the same K+1 target rows: the
    realistic rows of specdec_kernels.testing, built on the CPU so every device sees the same case.
    ``ragged``: the last request drafted K // 2 tokens (num_draft), its tail padded with -1, and its
    tree has K // 2 + 1 nodes."""
    chain = skt.make_chain_inputs("cpu", B, K, V, seed=seed)
    tree = skt.make_tree_inputs("cpu", B, K + 1, V, seed=seed)  # same seed: the chain's p and z
    num_draft = None
    if ragged:
        num_draft = torch.full((B,), K, dtype=torch.long)
        num_draft[-1] = K // 2
        chain.x[-1, K // 2:] = -1
    phi = -0.5 * torch.arange(K + 1, dtype=torch.float32).expand(B, K + 1)  # beams' log q and G
    case = {"x": chain.x, "p": chain.p, "q": chain.q, "z": chain.z, "phi": phi, "G": phi + 0.25,
            "tq": tree.q, "parents": tree.parents, "tokens": tree.tokens, "num_draft": num_draft,
            "num_nodes": None if num_draft is None else num_draft + 1}
    return skt.to_device(case, device)


def op_calls(case: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """op -> (public call, reference call) on ``case``. check=False on the public call: input
    validation is not what is compared or timed (the reference call validates the inputs)."""
    x, p, q, z, nd = case["x"], case["p"], case["q"], case["z"], case["num_draft"]
    rows = z.reshape(-1, z.shape[-1])
    phi, G = case["phi"], case["G"]
    tok, par, tq, nn = case["tokens"], case["parents"], case["tq"], case["num_nodes"]
    return {
        "verify_chain": (
            lambda: sk.verify_chain(x, p, q, num_draft=nd, seed=7, offset=4, check=False),
            lambda: reference.verify_chain(x, p, q, num_draft=nd, seed=7, offset=4),
        ),
        "verify_chain[draft_probs=None]": (
            lambda: sk.verify_chain(x, p, None, num_draft=nd, seed=7, offset=4, check=False),
            lambda: reference.verify_chain(x, p, None, num_draft=nd, seed=7, offset=4),
        ),
        "verify_chain_greedy": (
            lambda: sk.verify_chain_greedy(x, z, num_draft=nd, check=False),
            lambda: reference.verify_chain_greedy(x, z, num_draft=nd),
        ),
        "sampling_probs": (
            lambda: sk.sampling_probs(z, **SAMPLING_KW, check=False),
            lambda: reference.sampling_probs(z, **SAMPLING_KW),
        ),
        "gumbel_topk": (
            lambda: sk.gumbel_topk(rows, TOPK_K, temperature=0.8, seed=7, offset=4, check=False),
            lambda: reference.gumbel_topk(rows, TOPK_K, temperature=0.8, seed=7, offset=4),
        ),
        "stochastic_beam_step": (
            lambda: sk.stochastic_beam_step(z, phi, G, TOPK_K, temperature=0.8, seed=7, offset=4,
                                            check=False),
            lambda: reference.stochastic_beam_step(z, phi, G, TOPK_K, temperature=0.8, seed=7, offset=4),
        ),
        "verify_tree": (
            lambda: sk.verify_tree(tok, par, p, tq, num_nodes=nn, seed=7, offset=4, check=False),
            lambda: reference.verify_tree(tok, par, p, tq, num_nodes=nn, seed=7, offset=4),
        ),
        "verify_tree[draft_probs=None]": (
            lambda: sk.verify_tree(tok, par, p, None, num_nodes=nn, seed=7, offset=4, check=False),
            lambda: reference.verify_tree(tok, par, p, None, num_nodes=nn, seed=7, offset=4),
        ),
        "verify_tree_greedy": (
            lambda: sk.verify_tree_greedy(tok, par, z, num_nodes=nn, check=False),
            lambda: reference.verify_tree_greedy(tok, par, z, num_nodes=nn),
        ),
        "tree_attention_mask": (
            lambda: sk.tree_attention_mask(par, num_nodes=nn, packed=True, check=False),
            lambda: reference.tree_attention_mask(par, num_nodes=nn, packed=True),
        ),
        "tree_position_ids": (
            lambda: sk.tree_position_ids(par, 11, num_nodes=nn, check=False),
            lambda: reference.tree_position_ids(par, 11, num_nodes=nn),
        ),
        "draft_entropy": (
            lambda: sk.draft_entropy(rows, temperature=0.8, check=False),
            lambda: reference.draft_entropy(rows, temperature=0.8),
        ),
    }


def self_check(device: torch.device, backends: list[str]) -> bool:
    """Every op x backend against the reference on a small ragged case; prints PASS/FAIL."""
    print(f"\nself-check on {device.type} (B=4, K=3, V=97, ragged num_draft; 4-node trees, ragged; tokens, "
          f"parents, nodes, masks: exact; probabilities, log probs, scores: allclose 1e-5)")
    calls = op_calls(make_case(4, 3, 97, device, ragged=True, seed=1))
    ok = True
    for op, (fn, ref_fn) in calls.items():
        want = ref_fn()
        for be in backends:
            try:
                with sk.use_backend(be):
                    got = fn()
                skt.sync(device)
                skt.assert_same(got, want, rtol=1e-5, atol=1e-5)
                passed, why = True, ""
            except Exception as e:  # report every backend, do not stop at the first broken one
                passed, why = False, f"  ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ok &= passed
            print(f"  {op:32s} {be:10s} {'PASS' if passed else 'FAIL'}{why}")
    return ok


def timing_table(device: torch.device, backends: list[str]) -> bool:
    print(f"\ntiming on {device.type}: B={TIME_B}, K={TIME_K}, V={TIME_V}, float32, median of "
          f"synchronised eager calls in us (sampling_probs: {SAMPLING_KW}; gumbel_topk: k={TOPK_K} over "
          f"the B*(K+1) rows; stochastic_beam_step: width {TOPK_K}, W=K+1 beams; trees: a binary heap "
          f"of K+1 nodes over the same rows)")
    calls = op_calls(make_case(TIME_B, TIME_K, TIME_V, device, ragged=False))
    print(f"  {'op':32s} " + " ".join(f"{b:>18s}" for b in backends))
    ok = True
    for op, (fn, _) in calls.items():
        cells: list[str] = []
        ref_us: float | None = None
        for be in backends:
            if be == "triton" and device.type == "cpu":
                cells.append(f"{'n/a (interpreter)':>18s}")  # interpreted Triton: not a timing
                continue
            try:
                with sk.use_backend(be):
                    # the reference is a Python loop (~0.1 s a call here): few repeats
                    us = skt.median_us(fn, device, reps=3 if be == "reference" else 200,
                                       budget_s=0.5 if be == "reference" else 1.0)
            except Exception as e:
                ok = False
                cells.append(f"{'error: ' + type(e).__name__:>18s}")
                continue
            if be == "reference":
                ref_us = us
                cells.append(f"{us:18.1f}")
            else:
                speed = f" ({ref_us / us:5.1f}x)" if ref_us else ""
                cells.append(f"{f'{us:.1f}{speed}':>18s}")
        print(f"  {op:32s} " + " ".join(cells))
    print("  (Nx) = speed-up over the reference, same run")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specdec_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="device of the self-check and timing (default: cuda when available)")
    ap.add_argument("--quick", action="store_true", help="self-check only, no timing table")
    args = ap.parse_args(argv)

    have_cuda = torch.cuda.is_available()
    if args.device == "cuda" and not have_cuda:
        print("--device cuda: torch.cuda.is_available() is False here", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if have_cuda else "cpu"))

    loaded, with_cuda, msg = _backend.cpp_status()
    triton_state = "importable" if _backend.triton_importable() else "not importable"
    if _backend.triton_interpret():
        triton_state += ", TRITON_INTERPRET=1"
    print(f"specdec_kernels {sk.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}; GPU available: {have_cuda}"
          + (f", {torch.cuda.get_device_name()}" if have_cuda else "") + ")")
    print(f"compiled extension: {'loaded' if loaded else 'NOT loaded'}, "
          f"CUDA kernels: {'yes' if with_cuda else 'no'} ({msg})")
    print(f"triton: {triton_state}")
    if loaded:
        names = _backend.CPU_SIMD_LEVELS
        best = names[_backend.cpu_simd_level(supported=True)]
        print(f"cpu kernels: {names[_backend.cpu_simd_level()]} (best on this CPU: {best}; "
              f"SPECDEC_CPU_SIMD=0|1|2 caps it), {torch.get_num_threads()} torch threads")
    try:
        forced = _backend.forced()
    except ValueError as e:  # a bad SPECDEC_BACKEND value
        print(e, file=sys.stderr)
        return 2
    if forced:
        print(f"backend forced by SPECDEC_BACKEND: {forced}")
    for d in ["cpu"] + (["cuda"] if have_cuda else []):
        line = f"backends for {d} tensors: {', '.join(sk.backends(d))}"
        if not forced:
            defaults = {op: _backend.select(op, torch.device(d))
                        for op in ("verify_chain", "verify_chain_greedy", "sampling_probs", "gumbel_topk",
                                   "stochastic_beam_step", "verify_tree", "verify_tree_greedy",
                                   "tree_attention_mask", "tree_position_ids", "draft_entropy")}
            kinds = set(defaults.values())
            line += (f" (default: {kinds.pop()})" if len(kinds) == 1 else
                     " (defaults: " + ", ".join(f"{o}={b}" for o, b in defaults.items()) + ")")
        print(line)

    backends = sk.backends(device.type)
    ok = self_check(device, backends)
    if not args.quick:
        ok &= timing_table(device, backends)
    print("\nOK" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
