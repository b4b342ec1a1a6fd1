"""Plain-PyTorch ground truth for sampling without replacement (docs/algorithms.md §2-3).

This file is the arithmetic spec every backend follows, step by step, in float32:

Gumbel-Top-k, row r (stream ``r`` when row_streams, i.e. for an int seed, else 0; Philox slot 0):
    s[v] = float32(logits[r, v]) / T[r]                  IEEE division (correctly rounded)
    u[v] = draw_uniform(seed[r], offset[r], 0, stream, element=v)
    g[v] = -log(-log(u[v]))                              a Gumbel(0, 1) sample
    z[v] = s[v] + g[v]                                   the perturbed logit (-inf for masked v)
    tokens = the k largest z, descending, ties to the smaller v; -1 once z is -inf
    lse = logsumexp(s) computed in float64, rounded to float32 (the exactly rounded value;
          kernels may differ by float32 summation error, ~1e-6 relative)
    log_probs = s[tokens] - lse;  scores = z[tokens] - lse
z orders tokens exactly as log softmax(s) + g does: one pass over the row needs no softmax.

Stochastic Beam Search step, request b with beams w (element = w * V + v, so the step draws
W * V distinct uniforms from one Philox draw):
    per live beam: z as above, lse_w, and its candidates = the ``width`` largest z (ties to the
    smaller v) -- the only children that can survive, since G' below is increasing in z.
    phi'   = phi_w + (s - lse_w)                         cumulative log q of the child
    Gt     = phi_w + (z - lse_w)                         its perturbed score G~
    Z_w    = Gt of the beam's best candidate             max over ALL children of the beam
    G'     = truncate(G_w, Z_w, Gt):  G_w for the best candidate (Gt == Z_w), else
             G_w - max(t, 0) - log1p(exp(-|t|)),  t = G_w - Gt + log1mexp(Gt - Z_w)
             with log1mexp(a) = log(-expm1(a)) for a > -ln 2, log1p(-exp(a)) otherwise.
    keep the ``width`` best over all live beams' candidates by (G' desc, beam asc, rank of the
    candidate in its beam asc). Rank (z order) rather than token id breaks ties, so a beam's
    kept children stay a prefix of its Gumbel-Top-k order even where float32 rounds G' to G_w.
Backends agree on the tokens and parents exactly (up to last-ulp differences of log/exp, which
decide only near-ties) and on log_probs/scores to float32 rounding of lse.
"""

from __future__ import annotations

import math

import torch

from ..contract import gumbel as contract
from ..contract._common import BeamStep, SeedLike, TopKSample
from ._philox import draw_uniform

_LN2 = math.log(2.0)


# Rows are processed in blocks of at most this many elements: vectorised like a kernel's tile,
# never an [R, V] noise tensor.
BLOCK_ELEMENTS = 2**20


def row_candidates(x: torch.Tensor, T: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor,
                   stream: torch.Tensor, element0: torch.Tensor, k: int):
    """A block of n vocabulary rows x [n, V] (T, seed, offset, stream, element0: [n]; element0 is
    the Philox element of token 0 of each row). Returns, per row, the z of its k best candidates
    [n, k], their tokens [n, k] (-1 where z is -inf), its log-sum-exp [n, 1] and s at the tokens."""
    s = x.float() / T[:, None]
    element = element0[:, None] + torch.arange(s.shape[1])[None, :]
    u = draw_uniform(seed[:, None], offset[:, None], 0, stream[:, None], element)
    z = s + -torch.log(-torch.log(u))  # s + Gumbel noise; -inf for masked tokens
    zk, tok = _top(z, k)
    return zk, tok, _lse(s), torch.gather(s, 1, tok.clamp(min=0))


def _lse(s: torch.Tensor) -> torch.Tensor:
    """log-sum-exp over the last dim in float64, rounded to float32 once."""
    return torch.logsumexp(s.double(), dim=-1, keepdim=True).float()



def _top(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of the last dim, descending, ties to the smaller
    index (a stable sort); indices -1 where the value is -inf."""
    vals, idx = torch.sort(z, dim=-1, descending=True, stable=True)
    vals, idx = vals[..., :k], idx[..., :k]
    return vals, torch.where(vals == float("-inf"), torch.full_like(idx, -1), idx)


def _streams(row_streams: bool, n: int) -> torch.Tensor:
    """The Philox stream of each row: r when ``row_streams`` (an int seed), else 0 (a seed tensor)."""
    return torch.arange(n) if row_streams else torch.zeros(n, dtype=torch.long)


def op_gumbel_topk(logits, temperature, k, seed, offset, row_streams):
    """specdec::gumbel_topk on its canonical arguments (``contract.gumbel.GumbelTopkArgs``):
    logits [R, V], temperature float32 [R], seed / offset int64 [R]; (tokens, log_probs, scores)."""
    R, V = logits.shape
    dev = logits.device
    x, temp = logits.detach().cpu(), temperature.cpu()
    tokens = torch.full((R, k), -1, dtype=torch.long)
    log_probs = torch.full((R, k), float("-inf"))
    scores = torch.full((R, k), float("-inf"))
    seeds, offsets, streams = seed.cpu(), offset.cpu(), _streams(row_streams, R)
    step = max(1, BLOCK_ELEMENTS // V)
    for r0 in range(0, R, step):
        rows = slice(r0, min(R, r0 + step))
        n = rows.stop - r0
        zk, tok, lse, s_tok = row_candidates(x[rows], temp[rows], seeds[rows], offsets[rows], streams[rows],
                                             torch.zeros(n, dtype=torch.long), k)
        valid = tok >= 0  # valid slots come first
        tokens[rows] = tok
        log_probs[rows] = torch.where(valid, s_tok - torch.where(valid, lse, 0.0), log_probs[rows])
        scores[rows] = torch.where(valid, zk - torch.where(valid, lse, 0.0), scores[rows])
    return tokens.to(dev), log_probs.to(dev), scores.to(dev)


def gumbel_topk(
    logits: torch.Tensor,
    k: int,
    *,
    temperature: float | torch.Tensor = 1.0,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    check: bool = True,
    generator: torch.Generator | None = None,
) -> TopKSample:
    """Reference of :func:`specdec_kernels.gumbel_topk` (same arguments, same result)."""
    args = contract.gumbel_topk_args(logits, k, temperature, seed, offset, generator)
    if check:
        contract.check_gumbel_topk_values(*args)
    return TopKSample(*op_gumbel_topk(*args))


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate on both sides of -ln 2 (Maechler 2012)."""
    return torch.where(a > -_LN2, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def truncated_score(G: torch.Tensor, Z: torch.Tensor, Gt: torch.Tensor) -> torch.Tensor:
    """-log(exp(-G) - exp(-Z) + exp(-Gt)): a Gumbel with location Gt truncated at G, given the max
    Z of the siblings (docs/algorithms.md §3), in the stable form; exactly G where Gt == Z."""
    t = G - Gt + log1mexp(torch.clamp(Gt - Z, max=0.0))
    out = G - torch.clamp(t, min=0.0) - torch.log1p(torch.exp(-t.abs()))
    return torch.where(Gt >= Z, G, out)


def op_stochastic_beam_step(logits, beam_log_probs, beam_scores, beam_mask, width, temperature, seed, offset,
                            row_streams):
    """specdec::stochastic_beam_step on its canonical arguments
    (``contract.gumbel.StochasticBeamStepArgs``): logits [B, W, V], beam_log_probs / beam_scores
    float32 [B, W], beam_mask bool [B, W] or None, temperature float32 [B], seed / offset int64 [B];
    (parents, tokens, log_probs, scores), each [B, width]."""
    B, W, V = logits.shape
    seeds, offsets, streams = seed.cpu(), offset.cpu(), _streams(row_streams, B)
    dev = logits.device
    phi_all, G_all = beam_log_probs.cpu(), beam_scores.cpu()
    live_all = beam_mask.cpu() if beam_mask is not None else torch.ones(B, W, dtype=torch.bool)
    x, temp = logits.detach().cpu(), temperature.cpu()
    parents = torch.full((B, width), -1, dtype=torch.long)
    tokens = torch.full((B, width), -1, dtype=torch.long)
    log_probs = torch.full((B, width), float("-inf"))
    scores = torch.full((B, width), float("-inf"))
    kk = min(width, V)
    ninf = torch.tensor(float("-inf"))
    for b in range(B):
        # Each live beam's candidates in z order, its live beams as one block (dead beams are
        # not read): [W, kk].
        zk = torch.full((W, kk), float("-inf"))
        tok = torch.full((W, kk), -1, dtype=torch.long)
        lse = torch.zeros(W, 1)
        s_tok = torch.zeros(W, kk)
        live = live_all[b].nonzero().flatten()
        if live.numel():
            n = live.numel()
            zk[live], tok[live], lse[live], s_tok[live] = row_candidates(
                x[b, live], temp[b].expand(n), seeds[b].expand(n), offsets[b].expand(n), streams[b].expand(n),
                live * V, kk)
        phi, G = phi_all[b][:, None], G_all[b][:, None]
        valid = tok >= 0
        child_phi = phi + (s_tok - lse)
        Gt = phi + (zk - lse)
        Z = Gt[:, :1]
        Gp = torch.where(valid, truncated_score(G, Z, torch.where(valid, Gt, Z)), ninf)
        # Merge key (G' desc, beam asc, rank asc): a stable sort of the beam-major flattening.
        order = torch.sort(Gp.reshape(-1), descending=True, stable=True).indices[:width]
        n = int(valid.reshape(-1)[order].sum())  # valid entries come first (invalid ones are -inf)
        order = order[:n]
        parents[b, :n] = order // kk
        tokens[b, :n] = tok.reshape(-1)[order]
        log_probs[b, :n] = child_phi.reshape(-1)[order]
        scores[b, :n] = Gp.reshape(-1)[order]
    return parents.to(dev), tokens.to(dev), log_probs.to(dev), scores.to(dev)


def stochastic_beam_step(
    logits: torch.Tensor,
    beam_log_probs: torch.Tensor,
    beam_scores: torch.Tensor,
    width: int,
    *,
    temperature: float | torch.Tensor = 1.0,
    beam_mask: torch.Tensor | None = None,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    check: bool = True,
    generator: torch.Generator | None = None,
) -> BeamStep:
    """Reference of :func:`specdec_kernels.stochastic_beam_step` (same arguments, same result)."""
    args = contract.stochastic_beam_step_args(logits, beam_log_probs, beam_scores, width, temperature,
                                              beam_mask, seed, offset, generator)
    if check:
        contract.check_stochastic_beam_step_values(*args)
    return BeamStep(*op_stochastic_beam_step(*args))
