"""Plain-PyTorch ground truth for chain verification (docs/algorithms.md §1 and §9).

Slow and obvious on purpose: a Python loop over requests and positions, float32 arithmetic exactly
as the kernels do it. Same signatures as the public ops in ``specdec_kernels.ops.chain``.

rule="token" (§1), per request with n drafts: Philox draw ``offset`` (slot 0) gives position i its
acceptance uniform u_i at element i; draft i is accepted iff ``fl32(u_i * q_i(x_i)) < p_i(x_i)``
(q = 1 for deterministic drafts), up to the first rejection; draw ``offset + 1`` (slot 1) gives the
one final sample (exponential race) its uniforms at element = vocabulary index.

rule="block" (§9, Sun et al. 2024): the same draws (eta_i is u at element i - 1, the race uses
slot 1), so K = 1 decides and samples bit for bit as rule="token". With w_0 = 1 (float32) and the
drafts x_1..x_n (1-based here), every quantity computed as written, with no other rounding:

    w_i = fl32(num / q)  if num < q,  else (1 if num > 0 else 0),
          num = w_{i-1} * p_{i-1}(x_i) in float64 (exact),  q = q_{i-1}(x_i) (1 when deterministic);
          w_j = 0 from the first out-of-range draft on (check=False only; such a draft is never read)
    tau = n   iff  fl32(eta_n * q_{n-1}(x_n)) < fl32(w_{n-1} * p_{n-1}(x_n))     (h_n = w_n)
    else, for i = n-1 down to 1, stop at the first i with eta_i < h_i = m_i / (m_i + 1 - w_i):
        skip i unread when not (eta_i < w_i)              (m_i <= w_i sum(p_i) = w_i, so h_i <= w_i)
        (a kernel may stop at i unread when w_i = 1: then den = m_i and the test below accepts)
        m_i = exact 2^-64 fixed-point sum over v of r_i(v),  r_i(v) = fl32(max(0, w_i p_i(v) - q_i(v)))
              (float64: w_i p_i(v) is exact, so an FMA or not gives the same bits everywhere)
        m_i = w_i * fl32(1 - p_i(x_{i+1}))  in float64 (exact product) for deterministic drafts, whose
              q_i is one-hot at x_{i+1} (p_i(x_{i+1}) := 0 when x_{i+1} is out of range): no row read
        den = m_i + (1 - w_i) (float64);  accept iff den <= 0 or eta_i * den < m_i (float64)
    tau = 0 when no i is accepted.
    Emit x_1..x_tau, then the race (slot 1) over
        tau = n:      p_n (the bonus row)
        tau = 0:      rule="token"'s residual, max(0, p_0 - q_0) (p_0 without x_1 when deterministic)
        0 < tau < n:  r_tau (stochastic); p_tau without x_{tau+1} (deterministic: the same law as
                      norm(max(0, w p - onehot)), computed as rule="token" computes it)
    and if that residual is all zero, the race over p_tau.

Rows read per request: tau = n reads only the 2n scalars p(x_i), q(x_i); a step down to i reads the
row pair i (stochastic drafts) only when eta_i < w_i; then the one raced row. Deterministic drafts
read no more than rule="token".
"""

from __future__ import annotations

import torch

from ..contract import chain as contract
from ..contract._common import ChainResult, SeedLike, row_stream_ids
from ._fixed_point import fixed_point_sum
from ._philox import draw_uniform, race_keys


def sample_race(r: torch.Tensor, u: torch.Tensor) -> int:
    """Index drawn with law r / sum(r) by the exponential race; -1 when r is all zero."""
    keys = race_keys(r, u)
    if not bool((keys > 0).any()):
        return -1
    return int(torch.argmax(keys))  # first maximum: ties go to the smaller index


def _f32(v: float) -> float:
    """Round a float64 value to float32 (round to nearest even), as a Python float."""
    return float(torch.tensor(v, dtype=torch.float64).to(torch.float32))


def _token_residual(P, Q, drafts, b: int, a: int) -> torch.Tensor:
    """rule="token"'s correction row at position a: max(0, p - q), or p without the draft."""
    if Q is not None:
        return torch.clamp(P[b, a] - Q[b, a], min=0.0)
    r = P[b, a].clone()
    x = int(drafts[b, a])
    if 0 <= x < P.shape[2]:  # an out-of-range draft (check=False) was rejected unread
        r[x] = 0.0
    return r


def _token_row(P, Q, drafts, b: int, n: int, u_accept: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(accepted count, row to race) of rule="token" for request b."""
    V = P.shape[2]
    a = 0
    while a < n:
        x = int(drafts[b, a])
        if not 0 <= x < V:
            break
        p = P[b, a, x]
        q = Q[b, a, x] if Q is not None else torch.tensor(1.0)
        if not bool(u_accept[a] * q < p):  # float32 product, as every backend computes it
            break
        a += 1
    return a, (P[b, a] if a == n else _token_residual(P, Q, drafts, b, a))


def _block_row(P, Q, drafts, b: int, n: int, u_accept: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(tau, row to race) of rule="block" for request b: the module docstring's arithmetic."""
    if n == 0:
        return 0, P[b, 0]
    V = P.shape[2]
    eta = [float(e) for e in u_accept[:n]]
    valid = 0  # drafts before the first out-of-range one
    while valid < n and 0 <= int(drafts[b, valid]) < V:
        valid += 1
    px = [float(P[b, i, int(drafts[b, i])]) for i in range(valid)]
    qx = [float(Q[b, i, int(drafts[b, i])]) if Q is not None else 1.0 for i in range(valid)]
    w = [1.0] + [0.0] * n
    for i in range(1, valid + 1):
        num = w[i - 1] * px[i - 1]  # float32 * float32: exact in float64
        w[i] = _f32(num / qx[i - 1]) if num < qx[i - 1] else (1.0 if num > 0 else 0.0)
    if n <= valid and _f32(eta[n - 1] * qx[n - 1]) < _f32(w[n - 1] * px[n - 1]):
        return n, P[b, n]
    for i in range(n - 1, 0, -1):
        if not eta[i - 1] < w[i]:
            continue  # h_i <= w_i: rejected without reading row i
        if Q is not None:
            r = torch.clamp(P[b, i].double() * w[i] - Q[b, i].double(), min=0.0).to(torch.float32)
            m = fixed_point_sum(r)
        else:
            m = w[i] * _f32(1.0 - (px[i] if i < valid else 0.0))
        den = m + (1.0 - w[i])
        if den <= 0.0 or eta[i - 1] * den < m:
            return i, (r if Q is not None else _token_residual(P, Q, drafts, b, i))
    return 0, _token_residual(P, Q, drafts, b, 0)


def _verify_chain(row_rule, draft_tokens, target_probs, draft_probs, num_draft, seed, offset, row_streams):
    B, K = draft_tokens.shape
    V = target_probs.shape[2]
    streams = row_stream_ids(B, row_streams)
    tokens = torch.full((B, K + 1), -1, dtype=torch.long)
    num_accepted = torch.zeros(B, dtype=torch.long)
    P = target_probs.detach().cpu().float()
    Q = None if draft_probs is None else draft_probs.detach().cpu().float()
    drafts = draft_tokens.cpu()
    seeds, offsets = seed.cpu(), offset.cpu()
    vocab = torch.arange(V)
    positions = torch.arange(max(K, 1))
    for b in range(B):
        n = K if num_draft is None else min(max(int(num_draft[b]), 0), K)
        s, o, st = seeds[b], offsets[b], streams[b]
        a, row = row_rule(P, Q, drafts, b, n, draw_uniform(s, o, 0, st, positions))
        u_sample = draw_uniform(s, o, 1, st, vocab)
        y = sample_race(row, u_sample)
        if y < 0:  # residual of zero mass: fall back to p
            y = sample_race(P[b, a], u_sample)
        tokens[b, :a] = drafts[b, :a]
        tokens[b, a] = max(y, 0)
        num_accepted[b] = a
    dev = draft_tokens.device
    return tokens.to(dev), num_accepted.to(dev)


def op_verify_chain(*args) -> tuple[torch.Tensor, torch.Tensor]:
    """specdec::verify_chain on its canonical arguments (``contract.chain.VerifyChainArgs``)."""
    return _verify_chain(_token_row, *args)


def op_verify_chain_block(*args) -> tuple[torch.Tensor, torch.Tensor]:
    """specdec::verify_chain_block on its canonical arguments."""
    return _verify_chain(_block_row, *args)


def op_verify_chain_greedy(draft_tokens, target_logits, num_draft) -> tuple[torch.Tensor, torch.Tensor]:
    """specdec::verify_chain_greedy on its canonical arguments."""
    B, K = draft_tokens.shape
    tokens = torch.full((B, K + 1), -1, dtype=torch.long)
    num_accepted = torch.zeros(B, dtype=torch.long)
    L = target_logits.detach().cpu().float()
    for b in range(B):
        n = K if num_draft is None else min(max(int(num_draft[b]), 0), K)
        a = 0
        while True:
            best = int(torch.argmax(L[b, a]))  # first maximum
            tokens[b, a] = best
            if a == n or int(draft_tokens[b, a]) != best:
                break
            a += 1
        num_accepted[b] = a
    dev = draft_tokens.device
    return tokens.to(dev), num_accepted.to(dev)


def verify_chain(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    *,
    num_draft: torch.Tensor | None = None,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    rule: str = "token",
    check: bool = True,
    generator: torch.Generator | None = None,
) -> ChainResult:
    """Reference of :func:`specdec_kernels.verify_chain` (same arguments, same result)."""
    run = {"token": op_verify_chain, "block": op_verify_chain_block}[contract.check_rule(rule)]
    args = contract.verify_chain_args(draft_tokens, target_probs, draft_probs, num_draft, seed, offset,
                                      generator)
    if check:
        contract.check_verify_chain_values(*args)
    return ChainResult(*run(*args))


def verify_chain_greedy(
    draft_tokens: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    num_draft: torch.Tensor | None = None,
    check: bool = True,
) -> ChainResult:
    """Reference of :func:`specdec_kernels.verify_chain_greedy`."""
    args = contract.verify_chain_greedy_args(draft_tokens, target_logits, num_draft)
    if check:
        contract.check_verify_chain_greedy_values(*args)
    return ChainResult(*op_verify_chain_greedy(*args))
