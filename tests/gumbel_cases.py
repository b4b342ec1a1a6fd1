"""Shared inputs and checks of the gumbel_topk / stochastic_beam_step tests (test_gumbel_*.py):
random logits and beams, comparisons with the reference, the structural invariants of the
results, the seed / offset / temperature forms of the equality cases, and the small inputs of
the determinism, input-check and compile tests."""

from __future__ import annotations

import contextlib

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import GUMBEL_OFFSET_STRIDE as STRIDE

RTOL, ATOL = 1e-5, 1e-5
NINF = float("-inf")
# The Gumbel noise comes from 23-bit uniforms in (2^-24, 1 - 2^-24): g = -log(-log(u)) lies in
# about [-2.81, 16.6] (docstring note), so scores - log_probs does too.
G_MIN, G_MAX = -2.82, 16.7


# ----------------------------------------------------------------------------------------------
# Random inputs and comparisons
# ----------------------------------------------------------------------------------------------


def make_logits(shape, *, seed, dtype=torch.float32, masked=0.0, few=None):
    """Random logits of ``shape`` (rows along the last dim).

    masked: fraction of tokens set to -inf (token 0 of each row stays finite).
    few: (lo, hi): each row keeps only a random number in [lo, hi] of finite tokens at random
        positions (0 gives an all -inf row); the first row is all -inf when lo == 0.
    """
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(*shape, generator=g)
    V = shape[-1]
    if masked and V > 1:
        m = torch.rand(*shape, generator=g) < masked
        m[..., 0] = False
        x = x.masked_fill(m, NINF)
    if few is not None:
        lo, hi = few
        n = torch.randint(lo, hi + 1, shape[:-1], generator=g)
        if lo == 0:
            n.reshape(-1)[0] = 0
        rank = torch.rand(*shape, generator=g).argsort(-1).argsort(-1)  # a random permutation per row
        x = x.masked_fill(rank >= n[..., None], NINF)
    return x.to(dtype)


def make_beams(B, W, *, seed, root=False, dtype=torch.float32):
    """(beam_log_probs, beam_scores) [B, W]: cumulative log probs <= 0 and descending scores <= 0
    (zeros at the root)."""
    if root:
        z = torch.zeros(B, W, dtype=dtype)
        return z, z.clone()
    g = torch.Generator().manual_seed(seed + 1)
    G = -(3.0 * torch.rand(B, W, generator=g)).sort(-1).values
    phi = G - 0.5 - 2.0 * torch.rand(B, W, generator=g)
    return phi.to(dtype), G.to(dtype)


@contextlib.contextmanager
def one_thread():
    """Compute expected results on one intra-op thread: the reference's large int64 Philox tensors
    parallelise over 2 threads, which is up to 40x slower when another process holds a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def first_requests(obj, B, n):
    """The first n requests of per-request tensors (leading dim B) in nested containers; 0-d
    tensors and scalars unchanged. Valid for every seed kind: an int seed gives row r stream r."""
    if isinstance(obj, torch.Tensor):
        return obj[:n] if obj.dim() >= 1 and obj.shape[0] == B else obj
    if isinstance(obj, dict):
        return {k: first_requests(v, B, n) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        items = [first_requests(v, B, n) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


# The Triton interpreter runs the beam step at ~0.07 s per (request, beam): interpreted beam tests
# use the first request of each case, two where the case has per-request tensors or dead beams
# (and smaller batches elsewhere).
def _interp_requests(kw, mask) -> int:
    per_row = any(isinstance(v, torch.Tensor) for v in kw.values()) or mask is not None
    return 2 if per_row else 1


def _assert_dtypes(res, dtypes):
    got = tuple(t.dtype for t in res)
    assert got == dtypes, f"{type(res).__name__} dtypes {got}, expected {dtypes}"


def assert_topk_same(res, exp):
    """``res`` has the dtypes gumbel_topk promises and equals ``exp``
    (specdec_kernels.testing.assert_same: tokens exactly, log probs and scores within RTOL / ATOL,
    -inf where ``exp`` has -inf). The dtypes are checked here because ``exp`` may be another
    kernel result (determinism, CUDA graph and torch.compile tests) rather than the reference."""
    _assert_dtypes(res, (torch.long, torch.float32, torch.float32))
    skt.assert_same(res, exp, rtol=RTOL, atol=ATOL)


def assert_beam_same(res, exp):
    """As :func:`assert_topk_same`, for stochastic_beam_step (parents and tokens exactly)."""
    _assert_dtypes(res, (torch.long, torch.long, torch.float32, torch.float32))
    skt.assert_same(res, exp, rtol=RTOL, atol=ATOL)


def _row_temperature(temperature, R):
    if isinstance(temperature, torch.Tensor):
        return temperature.cpu().float().reshape(-1).expand(R) if temperature.dim() == 0 else \
            temperature.cpu().float().reshape(R)
    return torch.full((R,), float(temperature))


def check_topk_structure(res, logits, k, temperature=1.0):
    """Invariants of a TopKSample whatever the randomness."""
    x = logits.cpu().float()
    R, V = x.shape
    tokens, lp, sc = res.tokens.cpu(), res.log_probs.cpu(), res.scores.cpu()
    assert tokens.shape == (R, k) and tokens.dtype == torch.long
    assert lp.shape == (R, k) and lp.dtype == torch.float32
    assert sc.shape == (R, k) and sc.dtype == torch.float32
    s = x / _row_temperature(temperature, R)[:, None]
    n_finite = (s > NINF).sum(-1)
    valid = tokens >= 0
    # valid slots first, as many as there are drawable tokens
    assert torch.equal(valid.sum(-1), n_finite.clamp(max=k)), (tokens, n_finite)
    assert torch.equal(valid, torch.arange(k)[None, :] < valid.sum(-1, keepdim=True))
    assert bool((tokens < V).all())
    assert bool(torch.isneginf(lp[~valid]).all()) and bool(torch.isneginf(sc[~valid]).all())
    t = tokens.clamp(min=0)
    assert bool((s.gather(1, t)[valid] > NINF).all()), "a -inf token was drawn"
    for r in range(R):
        row = tokens[r][valid[r]].tolist()
        assert len(set(row)) == len(row), f"row {r}: repeated token {row}"
    # draw order: scores descending; log_probs are the log softmax at the tokens
    assert bool((sc[:, 1:][valid[:, 1:]] <= sc[:, :-1][valid[:, 1:]]).all()), "scores not descending"
    logsm = torch.log_softmax(s, -1).gather(1, t)
    torch.testing.assert_close(lp[valid], logsm[valid], rtol=RTOL, atol=ATOL)
    noise = (sc - lp)[valid]
    assert bool(((noise >= G_MIN) & (noise <= G_MAX)).all()), "noise outside the 23-bit Gumbel range"


def check_beam_structure(res, logits, phi, G, width, temperature=1.0, beam_mask=None):
    """Invariants of a BeamStep whatever the randomness (``logits`` clean at live beams)."""
    x = logits.cpu().float()
    B, W, V = x.shape
    phi, G = phi.cpu().float(), G.cpu().float()
    live = torch.ones(B, W, dtype=torch.bool) if beam_mask is None else beam_mask.cpu()
    parents, tokens, lp, sc = (t.cpu() for t in res)
    for t, dt in ((parents, torch.long), (tokens, torch.long), (lp, torch.float32), (sc, torch.float32)):
        assert t.shape == (B, width) and t.dtype == dt
    s = x / _row_temperature(temperature, B)[:, None, None]
    n_children = torch.where(live, (s > NINF).sum(-1), 0).sum(-1)
    valid = tokens >= 0
    assert torch.equal(valid, parents >= 0)
    assert torch.equal(valid.sum(-1), n_children.clamp(max=width)), (tokens, n_children)
    assert torch.equal(valid, torch.arange(width)[None, :] < valid.sum(-1, keepdim=True))
    assert bool(((parents < W) & (tokens < V)).all())
    for t in (lp, sc):
        assert bool(torch.isneginf(t[~valid]).all())
    p, t = parents.clamp(min=0), tokens.clamp(min=0)
    assert bool(live.gather(1, p)[valid].all()), "a dead beam was expanded"
    logsm = torch.log_softmax(torch.where(live[..., None], s, 0.0), -1)
    child = logsm[torch.arange(B)[:, None], p, t]
    assert bool((child[valid] > NINF).all()), "a -inf token was drawn"
    # cumulative log q of the new sequence
    torch.testing.assert_close(lp[valid], (phi.gather(1, p) + child)[valid], rtol=RTOL, atol=ATOL)
    # best first; truncated scores never exceed the parent's
    assert bool((sc[:, 1:][valid[:, 1:]] <= sc[:, :-1][valid[:, 1:]]).all()), "scores not descending"
    Gp = G.gather(1, p)
    assert bool((sc[valid] <= Gp[valid]).all()), "a child scores above its parent"
    for b in range(B):
        pairs = list(zip(parents[b][valid[b]].tolist(), tokens[b][valid[b]].tolist(), strict=True))
        assert len(set(pairs)) == len(pairs), f"request {b}: repeated expansion {pairs}"
        seen = set()
        for i, (w, _) in enumerate(pairs):
            if w not in seen:  # a beam's first kept child is its best one: G' == G exactly
                seen.add(w)
                assert float(sc[b, i]) == float(G[b, w]), (b, i, float(sc[b, i]), float(G[b, w]))


# The seed, offset and temperature forms of the equality cases.
def _rng_kw(opts, R, case_seed):
    seed, offset = opts.get("seed", 1234 + case_seed), opts.get("offset", 0)
    if seed == "tensor":
        seed = torch.arange(R, dtype=torch.long) * 1_000_003 + 17
    elif seed == "0d":
        seed = torch.tensor(99, dtype=torch.long)
    if offset == "tensor":
        offset = torch.arange(R, dtype=torch.long) * STRIDE + 2**33
    elif offset == "0d":
        offset = torch.tensor(4, dtype=torch.long)
    kw = dict(offset=offset)
    if seed == "generator":
        kw["generator"] = 5  # a placeholder: a fresh torch.Generator is made per call
    else:
        kw["seed"] = seed
    T = opts.get("temperature", 1.0)
    if T == "row":
        T = torch.rand(R, generator=torch.Generator().manual_seed(case_seed)) * 1.5 + 0.3
    elif T == "0d":
        T = torch.tensor(0.6)
    kw["temperature"] = T
    if "check" in opts:
        kw["check"] = opts["check"]
    return kw


def _strided(t):
    """The same values as a non-contiguous view (a slice of a larger buffer along the last dim)."""
    big = torch.zeros(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype)
    V = t.shape[-1]
    big[..., 2:V + 2] = t
    out = big[..., 2:V + 2]
    assert not out.is_contiguous() or t.shape[-1] == 0
    return out


def _dead_mask(B, W, seed):
    """Random live/dead beams: beam 0 live in most requests, request 1 (if any) all dead."""
    g = torch.Generator().manual_seed(seed + 2)
    live = torch.rand(B, W, generator=g) < 0.6
    live[::2, 0] = True
    if B > 1:
        live[1] = False
    return live


# High-entropy inputs (independent draws differ) of the determinism, input and compile tests.
def _varied_topk(R=33, V=111):
    return make_logits((R, V), seed=42).mul(0.2)  # high entropy: independent draws differ


def _varied_beam(B=33, W=3, V=111):
    x = make_logits((B, W, V), seed=43).mul(0.2)
    phi, G = make_beams(B, W, seed=43)
    return x, phi, G


def _beam_good(B=2, W=3, V=5):
    x, phi, G = _varied_beam(B=B, W=W, V=V)
    return dict(logits=x, beam_log_probs=phi, beam_scores=G, width=2)


def _need_cpp_gumbel():
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    try:
        _ = torch.ops.specdec.gumbel_topk, torch.ops.specdec.stochastic_beam_step
    except (AttributeError, RuntimeError) as e:
        pytest.skip(f"the extension has no gumbel ops yet: {e}")
