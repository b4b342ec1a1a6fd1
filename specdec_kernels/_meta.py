"""Fake (meta) implementations of the compiled ops, so torch.compile and CUDA graphs see opaque
ops with known output shapes. Imported once the compiled library has registered the schemas."""

from __future__ import annotations

import torch


def _chain_fake(draft_tokens, target, *_args, **_kwargs):
    B, K = draft_tokens.shape
    return draft_tokens.new_empty((B, K + 1)), draft_tokens.new_empty((B,))


def _gumbel_topk_fake(logits, temperature, k, seed, offset, row_streams, check=False):
    R = logits.shape[0]
    return (logits.new_empty((R, k), dtype=torch.long), logits.new_empty((R, k), dtype=torch.float32),
            logits.new_empty((R, k), dtype=torch.float32))


def _beam_step_fake(logits, beam_log_probs, beam_scores, beam_mask, width, temperature, seed, offset,
                    row_streams, check=False):
    B = logits.shape[0]
    ints = logits.new_empty((B, width), dtype=torch.long)
    floats = logits.new_empty((B, width), dtype=torch.float32)
    return ints, ints.clone(), floats, floats.clone()


def _tree_fake(tokens, *_args, **_kwargs):
    B, N = tokens.shape
    return tokens.new_empty((B, N)), tokens.new_empty((B,)), tokens.new_empty((B, N))


def _tree_mask_fake(parents, num_nodes, packed):
    B, N = parents.shape
    if packed:
        return parents.new_empty((B, N, (N + 31) // 32), dtype=torch.int32)
    return parents.new_empty((B, N, N), dtype=torch.bool)


def register(skip=()) -> None:
    """Register every fake; an op missing from the loaded _C (an extension built from an older
    checkout) is reported once instead of breaking ``import specdec_kernels``."""
    missing = []
    for name, fake in _fakes().items():
        if name in skip:
            continue
        try:
            torch.library.register_fake(f"specdec::{name}")(fake)
        except RuntimeError:
            missing.append(name)
    if missing:
        import warnings

        warnings.warn(
            f"specdec_kernels._C does not define {', '.join(missing)}: it was built from an older "
            "checkout; rebuild it (pip install --no-build-isolation -e .). Until then those ops "
            "fail on the cpu/cuda backends (use_backend('reference') or 'triton' still work).",
            RuntimeWarning, stacklevel=3)


def _fakes() -> dict:
    return {
        "verify_chain": lambda draft_tokens, target_probs, draft_probs, num_draft, seed, offset, row_streams,
        check=False: _chain_fake(draft_tokens, target_probs),
        "verify_chain_block": lambda draft_tokens, target_probs, draft_probs, num_draft, seed, offset,
        row_streams, check=False: _chain_fake(draft_tokens, target_probs),
        "verify_chain_greedy": lambda draft_tokens, target_logits, num_draft, check=False: _chain_fake(
            draft_tokens, target_logits),
        "gumbel_topk": _gumbel_topk_fake,
        "stochastic_beam_step": _beam_step_fake,
        "verify_tree": _tree_fake,
        "verify_tree_block": _tree_fake,
        "verify_tree_greedy": _tree_fake,
        "tree_attention_mask": _tree_mask_fake,
        "tree_position_ids": lambda parents, prefix_len, num_nodes: parents.new_empty(parents.shape),
        "draft_entropy": lambda logits, temperature, check=False: logits.new_empty((logits.shape[0],),
                                                                                   dtype=torch.float32),
        "divergence_forward": lambda z, p, kind: z.new_empty((z.shape[0], 4), dtype=torch.float32),
        "divergence_backward": lambda z, p, stats, coef, kind: torch.empty_like(z),
        "sampling_probs": lambda logits, temperature, top_k, top_p, check=False: logits.new_empty(
            logits.shape, dtype=torch.float32),
    }

