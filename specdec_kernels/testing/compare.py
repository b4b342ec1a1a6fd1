"""Comparators: an op's result against the expected (reference) one, raising AssertionError that
says which field differs and how.

Integers and booleans (tokens, parents, accepted nodes, masks, position ids) must be equal, dtype
included: the ops promise the reference's exact result. Floating-point fields (probabilities, log
probs, scores, entropies) are compared within a tolerance, since a kernel legitimately accumulates
in a different order than the reference.
"""

from __future__ import annotations

from typing import Any

import torch

import specdec_kernels as sk


def assert_same(got: Any, want: Any, *, prefix: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
                name: str = "result") -> None:
    """``got`` equals ``want``: integer and boolean tensors exactly, floating-point tensors within
    ``rtol`` / ``atol`` (as ``torch.isclose``: NaN never matches), shapes and dtypes equal. Tensors or
    (named) tuples of them, compared field by field; either may live on any device.

    ``prefix``: compare only ``got``'s first ``len(want)`` rows (dim 0 of every field). The
    reference is a Python loop and rows are independent (seed tensors give every row its own
    stream), so callers run it on the first rows of a large batch only.
    """
    if isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            n = len(got) if isinstance(got, tuple) else "?"
            raise AssertionError(f"{name}: got {type(got).__name__} of {n} fields, "
                                 f"expected {type(want).__name__} of {len(want)}")
        fields = getattr(want, "_fields", None)
        names = [f"{name}.{f}" for f in fields] if fields else [f"{name}[{i}]" for i in range(len(want))]
        for field, g, w in zip(names, got, want, strict=True):
            assert_same(g, w, prefix=prefix, rtol=rtol, atol=atol, name=field)
        return
    if not isinstance(got, torch.Tensor) or not isinstance(want, torch.Tensor):
        raise AssertionError(f"{name}: got a {type(got).__name__}, expected a {type(want).__name__}")
    g = (got[: want.shape[0]] if prefix else got).detach().cpu()
    w = want.detach().cpu()
    if g.shape != w.shape:
        raise AssertionError(f"{name}: shape {tuple(g.shape)}, expected {tuple(w.shape)}")
    if g.dtype != w.dtype:
        raise AssertionError(f"{name}: dtype {g.dtype}, expected {w.dtype}")
    # One-line messages: python -m specdec_kernels prints the first line of a failure per backend.
    if w.is_floating_point():
        bad = ~torch.isclose(g, w, rtol=rtol, atol=atol)
        if bool(bad.any()):
            err = torch.where(bad, (g.double() - w.double()).abs().nan_to_num(float("inf")), 0.0)
            at = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
            raise AssertionError(f"{name}: {int(bad.sum())} of {w.numel()} elements not within "
                                 f"rtol={rtol:g}, atol={atol:g} (worst at {at}: got {g[at].item():.8g}, "
                                 f"expected {w[at].item():.8g})")
        return
    diff = g != w
    if bool(diff.any()):
        at = tuple(diff.nonzero()[0].tolist())
        raise AssertionError(f"{name}: {int(diff.sum())} of {w.numel()} elements differ (first at {at}: "
                             f"got {g[at].item()}, expected {w[at].item()})")


def check_chain(out: sk.ChainResult, ref: sk.ChainResult, K: int, V: int) -> None:
    """verify_chain / verify_chain_greedy: well-formed on every row (num_accepted in [0, K],
    emitted tokens in [0, V), -1 after them); equal to ``ref`` on the rows it was computed for."""
    n = out.num_accepted
    assert out.tokens.shape[1] == K + 1, f"tokens have {out.tokens.shape[1]} columns, expected K + 1"
    assert bool(((n >= 0) & (n <= K)).all()), "num_accepted out of [0, K]"
    pos = torch.arange(K + 1, device=n.device)[None, :]
    emitted = pos <= n[:, None]
    t = out.tokens
    assert bool(((t >= 0) & (t < V) | ~emitted).all()), "an emitted token is out of [0, V)"
    assert bool(((t == -1) | emitted).all()), "tokens after the emitted ones must be -1"
    assert_same(out, ref, prefix=True)


def check_tree(out: sk.TreeResult, ref: sk.TreeResult) -> None:
    """verify_tree / verify_tree_greedy: all three fields equal to ``ref`` on its rows."""
    assert_same(out, ref, prefix=True)


def check_samples(out: sk.TopKSample | sk.BeamStep, ref: sk.TopKSample | sk.BeamStep) -> None:
    """gumbel_topk / stochastic_beam_step: tokens (and parents) equal to ``ref`` on its rows, log
    probs and scores within atol 1e-4 (float32 log-sum-exp rounding over a row of V logits)."""
    assert_same(out, ref, prefix=True, rtol=1e-5, atol=1e-4)


def check_probs(out: torch.Tensor, ref: torch.Tensor, scaled: torch.Tensor, top_p: float = 1.0) -> None:
    """sampling_probs: rows sum to 1 everywhere; the first rows match the reference.

    ``scaled``: the float32 logits / temperature of the reference's rows. The tolerance is 1e-5
    or twice what PyTorch's own float32 softmax loses against float64 on those rows, whichever is
    larger: the reference is computed in float64, and a kernel that accumulates in float32 (as
    torch.softmax does) is legitimately ~5e-5 off at V=128256.

    For the same reason top-p (without top-k) may keep a token the reference drops, or the
    reverse, when the token's preceding mass is within that rounding of top_p. Such a flip is
    accepted only for tokens whose float64 preceding mass is within 1e-4 of top_p; the kept
    probabilities are then compared after renormalising both rows on the tokens both keep.
    """
    flat = out.reshape(-1, out.shape[-1])
    assert out.dtype == torch.float32, f"probabilities are {out.dtype}, expected torch.float32"
    sums = flat.sum(-1, dtype=torch.float64)
    assert bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)), "rows do not sum to 1"
    x = scaled.detach().cpu()
    p64 = torch.softmax(x.double(), -1)
    torch_err = (torch.softmax(x, -1).double() - p64).abs().max().item()
    tol = max(1e-5, 2 * torch_err)
    got = flat[: ref.shape[0]].cpu()
    ref = ref.cpu()
    flips = (got > 0) != (ref > 0)
    if bool(flips.any()) and top_p < 1.0:
        for r, i in flips.nonzero().tolist():
            preceding = p64[r][p64[r] > p64[r, i]].sum().item()
            assert abs(preceding - top_p) < 1e-4, (
                f"row {r}: token {i} kept by one of kernel/reference only, but its preceding mass "
                f"{preceding:.6f} is not at the top_p={top_p} boundary"
            )
        both = (got > 0) & (ref > 0)
        got = torch.where(both, got, 0.0)
        ref = torch.where(both, ref, 0.0)
        got = got / got.sum(-1, keepdim=True)
        ref = ref / ref.sum(-1, keepdim=True)
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
