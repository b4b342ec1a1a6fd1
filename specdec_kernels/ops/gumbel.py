"""Sampling without replacement (docs/algorithms.md §2-3): Gumbel-Top-k and one Stochastic Beam Search
step, the drafting half of recursive speculative decoding. The public ops."""

from __future__ import annotations

import torch

from ..contract import gumbel as contract
from ..contract._common import BeamStep, SeedLike, TopKSample
from ..contract.gumbel import CUDA_MAX_K, GUMBEL_OFFSET_STRIDE  # noqa: F401  (re-exported)
from . import _dispatch
from ._dispatch import Op

_dispatch.register(Op("gumbel_topk", fake=contract.gumbel_topk_fake,
                      check_values=contract.check_gumbel_topk_values,
                      reference="reference.gumbel:op_gumbel_topk", triton="triton.gumbel:gumbel_topk",
                      device_arg=0))
_dispatch.register(Op("stochastic_beam_step", fake=contract.stochastic_beam_step_fake,
                      check_values=contract.check_stochastic_beam_step_values,
                      reference="reference.gumbel:op_stochastic_beam_step",
                      triton="triton.gumbel:stochastic_beam_step", device_arg=0))


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
    """Draw k distinct tokens per row without replacement from softmax(logits / temperature).

    Gumbel-Top-k: the k largest ``logits / temperature + Gumbel noise``, in descending order, have
    exactly the law of sequential sampling without replacement,
    ``P(x1, x2, ...) = p(x1) * p(x2) / (1 - p(x1)) * ...`` (docs/algorithms.md §2). One pass over each
    row; only the k best candidates are kept (no [R, V] noise tensor on any backend). Tokens with
    -inf logits are never drawn.

    Args:
        logits: Shape: (R, V), float32/float16/bfloat16 (arithmetic in float32); -inf masks a token.
        k: tokens per row, 1 <= k <= V.
        temperature: float or float tensor of shape () or (R,); > 0.
        seed: int, int64 tensor of shape () or (R,), or None (drawn from ``generator``). An int gives
            row r Philox stream r; a tensor gives each row the stream of its own seed, so a row's
            draws do not depend on its batch position. Values in [0, 2**63).
        offset: int or int64 tensor of shape () or (R,): the call uses Philox draw ``offset``
            (``GUMBEL_OFFSET_STRIDE`` = 1: advance by 1 between calls sharing a seed).
        check: reject NaN/+inf logits (also finite ones that overflow when divided by the
            temperature) and non-positive temperatures in tensors (one device sync).
        generator: used only to draw ``seed`` when it is None.

    Returns:
        TopKSample(tokens, log_probs, scores):
            tokens: (R, k) int64, distinct, in draw order; -1 in the slots past the number of
                tokens with a finite logit (-inf masks a token; any finite logit can be drawn).
            log_probs: (R, k) float32, log softmax(logits / temperature) at the tokens; -inf in
                missing slots.
            scores: (R, k) float32, log_probs + Gumbel noise, descending; -inf in missing slots.

    Note: the noise comes from 23-bit uniforms (docs/design.md "Randomness"), so it is a Gumbel truncated
    to about [-2.8, 16.6]; the law differs from the exact one by less than 1e-7 per draw.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> out = sk.gumbel_topk(torch.tensor([[2.0, 1.0, 0.0, float("-inf")]]), 3, seed=0)
        >>> sorted(out.tokens[0].tolist())
        [0, 1, 2]
    """
    args = contract.gumbel_topk_args(logits, k, temperature, seed, offset, generator)
    return TopKSample(*_dispatch.call("gumbel_topk", args, check))


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
    """One step of Stochastic Beam Search: the ``width`` best expansions of each request's beams.

    Every child t of a live beam y gets ``phi' = phi(y) + log q(t | y)`` and the perturbed score
    ``G~ = phi' + Gumbel``, truncated at the parent's score ``G(y)`` given the maximum ``Z`` over
    the beam's children: ``G' = -log(exp(-G(y)) - exp(-Z) + exp(-G~))`` (stable form in
    docs/algorithms.md §3). The ``width`` largest G' over all live beams of a request are kept, sorted
    descending. Start from the root (W = 1, log prob 0, score 0) and repeat L times: the kept
    sequences are ``width`` distinct samples without replacement from the draft's sequence law q,
    and the first follows q exactly. A beam's kept children, in output order, are a prefix of its
    Gumbel-Top-k order: valid without-replacement siblings for tree verification. Each beam's row
    is read once; only ``width`` candidates per beam are kept.

    Args:
        logits: Shape: (B, W, V), float32/float16/bfloat16: the drafter's next-token logits of each
            beam. -inf masks a token.
        beam_log_probs: Shape: (B, W), float: cumulative log q of each beam (0 at the root).
        beam_scores: Shape: (B, W), float: each beam's perturbed score G (0 at the root), as
            returned by the previous step.
        width: expansions kept per request, >= 1.
        temperature: float or float tensor of shape () or (B,); > 0; applied to the logits.
        beam_mask: Shape: (B, W), bool, or None (all live). Dead beams are never expanded (their
            rows are not read).
        seed, offset, generator: as in :func:`gumbel_topk` with rows = requests; the call uses one
            Philox draw (``GUMBEL_OFFSET_STRIDE``), element ``w * V + t`` for child t of beam w.
        check: reject NaN/+inf (or overflowing scaled) logits, non-positive temperatures and
            non-finite scores or log probs, of live beams only (one device sync).

    Returns:
        BeamStep(parents, tokens, log_probs, scores), each of shape (B, width), best first:
            parents: int64 beam index in [0, W); tokens: int64 token; log_probs: float32 cumulative
            log q; scores: float32 G'. Slots past the number of possible expansions hold -1, -1,
            -inf, -inf.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> logits = torch.randn(2, 1, 50)                       # B=2 requests, the root beam
        >>> zeros = torch.zeros(2, 1)
        >>> step = sk.stochastic_beam_step(logits, zeros, zeros, 3, seed=0)
        >>> step.tokens.shape, bool((step.parents == 0).all())
        (torch.Size([2, 3]), True)
    """
    args = contract.stochastic_beam_step_args(logits, beam_log_probs, beam_scores, width, temperature,
                                              beam_mask, seed, offset, generator)
    return BeamStep(*_dispatch.call("stochastic_beam_step", args, check))
