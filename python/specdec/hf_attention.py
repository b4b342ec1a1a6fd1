"""specdec_kernels.tree_attention as a Hugging Face attention implementation.

``register()`` adds ``"specdec_tree"`` to transformers' AttentionInterface. A model (or a LLaVA
model's language model) switched to it computes:

* forwards given ``specdec_tree_mask=`` (the packed int32 mask [B, N, ceil(N/32)] of the N query
  tokens, which must be the LAST N entries of the key/value cache): fused tree attention, every
  query over the cache before them plus the tree entries its mask row allows. No [N, L + N] mask
  is built (transformers builds none either: the name has no mask function, so its mask step
  returns None);
* every other forward (prefill, chains, decode): PyTorch SDPA with the causal mask aligned to the
  end of the cache, exactly what the "sdpa" implementation computes.

The decoder switches the target's language model to it for the duration of ``generate`` (and
back), and passes ``specdec_tree_mask`` in its tree-verification forward.
"""

from __future__ import annotations

import torch

import specdec_kernels as sk

NAME = "specdec_tree"
#: forward kwarg that carries the packed tree mask down to the attention layers
MASK_KWARG = "specdec_tree_mask"
#: forward kwarg with each row's root slot (int32 [B]) when rows have their own cache lengths
#: (specdec.adapter.RaggedKVCache): row b's tree entries are slots root[b] .. root[b] + N - 1
ROOT_KWARG = "specdec_tree_root"


def tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """AttentionInterface function: query [B, Hq, N, D], key/value [B, Hkv, L + N, D] (cache updated)."""
    tree_mask = kwargs.pop(MASK_KWARG, None)
    roots = kwargs.pop(ROOT_KWARG, None)
    n = query.shape[2]
    past = key.shape[2] - n
    if tree_mask is not None:
        if dropout:
            raise ValueError("specdec_tree attention does not support dropout (use it in eval mode)")
        if roots is None:
            lens = torch.full((query.shape[0],), past, dtype=torch.int32, device=query.device)
            k_tree, v_tree = key[:, :, past:], value[:, :, past:]
        else:
            # rows of their own lengths: row b's tree entries start at its root slot
            lens = roots
            idx = (roots.long()[:, None] + torch.arange(n, device=key.device))[:, None, :, None]
            k_tree = key.gather(2, idx.expand(-1, key.shape[1], -1, key.shape[3]))
            v_tree = value.gather(2, idx.expand(-1, value.shape[1], -1, value.shape[3]))
        out = sk.tree_attention(
            query,
            key[:, :, :past],
            value[:, :, :past],
            lens,
            k_tree,
            v_tree,
            tree_mask,
            scale=scaling,
            check=False,
        )
        return out.transpose(1, 2).contiguous(), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and n > 1 and past > 0:
        # SDPA's is_causal aligns to the top-left corner; with a cache the diagonal is at the end
        attention_mask = torch.ones(n, past + n, dtype=torch.bool, device=query.device).tril(past)[None, None]
        causal = False
    return sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=causal,
        **kwargs,
    )


def register() -> str:
    """Register the implementation with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, tree_attention_forward)
    return NAME


def language_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose attention verifies the tree: a LLaVA model's language model, else the model.
    None when it cannot switch attention implementations (not built on AttentionInterface)."""
    inner = getattr(getattr(model, "model", None), "language_model", None)
    lm = inner if inner is not None else model
    can = getattr(lm, "_can_set_attn_implementation", None)
    if not callable(can) or not hasattr(lm, "set_attn_implementation"):
        return None
    try:
        return lm if can() else None
    except Exception:  # noqa: BLE001  (older transformers: the probe itself may not exist / work)
        return None


class use_tree_attention:  # noqa: N801  (a context manager used like a function)
    """Switch ``model``'s language model to ``specdec_tree`` inside the ``with`` block, then back."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.lm = language_model(model)
        self.before: str | None = None

    @property
    def active(self) -> bool:
        return self.lm is not None

    def __enter__(self) -> use_tree_attention:
        if self.lm is not None:
            register()
            self.before = self.lm.config._attn_implementation
            self.lm.set_attn_implementation(NAME)
        return self

    def __exit__(self, *exc) -> None:
        if self.lm is not None and self.before is not None:
            self.lm.set_attn_implementation(self.before)
