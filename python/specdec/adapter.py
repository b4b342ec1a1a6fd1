"""The model adapter: a batch of sequences through one Hugging Face model, each row with its own KV length.

A speculative round forwards different numbers of tokens per row (drafts, pending tokens) and keeps
different numbers afterwards (acceptance). :class:`RaggedKVCache` gives every row its own write
position in one preallocated ``[B, H, capacity, D]`` buffer per layer, so no row is padded, shifted
or recomputed because another row rejected: a rejected draft is dropped by not counting its slot
(it is overwritten next round), an accepted tree path is moved in place by
:func:`specdec_kernels.compact_tree_kv` with per-row roots. Slot s of a row holds its token at
position s (prompts are right-padded at prefill and the padding is overwritten), so position ids
are slot numbers and the per-row masks are built from row lengths.

Any engine can drive a model through the :class:`ModelAdapter` protocol; :class:`SequenceCache` is
the implementation for Hugging Face models (transformers 5.x ``Cache`` API, 4-D additive masks).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

import specdec_kernels as sk

from .hf_attention import MASK_KWARG, ROOT_KWARG
from .plans import KeepPlan, kv_keep_plan


@runtime_checkable
class ModelAdapter(Protocol):
    """What the strategies need from a model holding B sequences (rows).

    Row i has ``lens[i]`` committed tokens with KV entries and ``pending[i]`` committed tokens not
    forwarded yet; the last pending token is the ROOT of the next draft (the last committed token).
    Speculative entries written past ``lens[i]`` are tentative until :meth:`keep` decides.
    """

    lens: list[int]
    pending: list[list[int]]

    @property
    def batch_size(self) -> int: ...

    def forward_chains(self, extra: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
        """Forward each row's pending tokens then ``extra[i]`` causally (after its tentative
        entries); returns (logits [B, N, V] float32, first[i]: the index of row i's first position
        AFTER its pending tokens' last one, i.e. logits[i, first[i] - 1] follow the root)."""
        ...

    def forward_tree(self, tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor,
                     start: Sequence[int]) -> torch.Tensor:
        """Forward tree nodes ``start[i]..num_nodes[i]-1`` of each row (node 0 = the root, the last
        pending token); node j's entry sits at the root's slot + j. Returns logits [B, N', V]."""
        ...

    def keep(self, plan: KeepPlan, pending: Sequence[Sequence[int]]) -> None:
        """After verification: apply a :func:`specdec.plans.kv_keep_plan` (keep the root and the
        accepted nodes with entries, drop the other tentative entries); ``pending[i]`` becomes
        the row's pending tokens."""
        ...

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep only these rows (in this order): finished sequences leave the batch."""
        ...


# ----------------------------------------------------------------------------------------------
# The ragged KV cache
# ----------------------------------------------------------------------------------------------


@functools.cache
def _ragged_cache_class() -> type:
    """RaggedKVCache with transformers' ``Cache`` as a base (made once, on first use: the module
    imports without transformers); models check ``isinstance(cache, Cache)``."""
    from transformers.cache_utils import Cache

    return type("RaggedKVCache", (RaggedKVCache, Cache), {})


class _RaggedLayer:
    """One layer's keys and values [B, H, capacity, D]; writes go to each row's own slots."""

    def __init__(self, owner: RaggedKVCache) -> None:
        self.owner = owner
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.is_initialized = False
        self.is_sliding = False
        self.is_compileable = False

    def reserve(self, need: int) -> None:
        if self.keys is not None and need > self.keys.shape[2]:
            self._grow(self.keys, self.values, need)

    def _grow(self, k: torch.Tensor, v: torch.Tensor, need: int) -> None:
        # capacity doubles (amortised O(1) copies per token). Zeroed, not left uninitialised: slots
        # past a row's length are masked, but a masked NaN key still poisons the softmax (q.k = NaN)
        cap = max(64, need)
        if self.keys is not None:
            cap = max(cap, 2 * self.keys.shape[2])
        B, H, _, D = k.shape
        nk = k.new_zeros(B, H, cap, D)
        nv = v.new_zeros(B, H, cap, v.shape[-1])
        if self.keys is not None:
            old = self.keys.shape[2]
            nk[:, :, :old] = self.keys
            nv[:, :, :old] = self.values
        self.keys, self.values = nk, nv
        self.is_initialized = True

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.owner
        n = k.shape[2]
        if self.keys is None or o.write_end > self.keys.shape[2]:
            self._grow(k, v, o.write_end)
        if o.uniform_write is not None:
            w = o.uniform_write
            self.keys[:, :, w : w + n] = k
            self.values[:, :, w : w + n] = v
        else:
            # row b writes at its own slots: one index_put over the [B, slot] plane of a [B, S, H, D]
            # view (about 10x a scatter_ of the expanded [B, H, n, D] index on the CPU)
            self.keys.transpose(1, 2).index_put_(o.write_index, k.transpose(1, 2))
            self.values.transpose(1, 2).index_put_(o.write_index, v.transpose(1, 2))
        return self.keys[:, :, : o.width], self.values[:, :, : o.width]

    def get_seq_length(self) -> int:
        return self.owner.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.width, 0

    def get_max_length(self) -> int:
        return -1

    def select(self, rows: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys = self.keys.index_select(0, rows)
            self.values = self.values.index_select(0, rows)


class RaggedKVCache:
    """A transformers ``Cache`` whose rows have their own write positions (see the module doc).

    Before each forward the adapter calls :meth:`plan_write`; every layer's ``update`` then writes
    row b's n new entries at slots ``write_at[b] .. write_at[b] + n - 1`` and returns the first
    ``width`` slots of the buffers, which the 4-D mask of that forward covers.
    """

    def __new__(cls, *args, **kwargs):
        if cls is RaggedKVCache:
            cls = _ragged_cache_class()
        return object.__new__(cls)

    def __init__(self) -> None:
        self.layers: list[_RaggedLayer] = []
        self.layer_class_to_replicate = None
        self.offloading = False
        self.write_index: tuple[torch.Tensor, torch.Tensor] | None = None
        self.uniform_write: int | None = None
        self.write_end = 0
        self.width = 0

    def plan_write(self, write_at: Sequence[int], n: int, device: torch.device) -> None:
        """The next forward writes ``n`` entries per row, row b's from slot ``write_at[b]``."""
        first = write_at[0]
        self.uniform_write = first if all(w == first for w in write_at) else None
        if self.uniform_write is None:
            base = torch.tensor(list(write_at), dtype=torch.long, device=device)
            rows = torch.arange(len(write_at), device=device)[:, None].expand(-1, n)
            self.write_index = (rows, base[:, None] + torch.arange(n, device=device))
        self.write_end = max(write_at) + n
        self.width = self.write_end

    # transformers' Cache surface used by the models' attention layers
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(_RaggedLayer(self))
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.width, 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def tensors(self) -> list[torch.Tensor]:
        """Every layer's key and value buffers [B, H, capacity, D] (keys then values per layer)."""
        out = []
        for layer in self.layers:
            if layer.keys is not None:
                out += [layer.keys, layer.values]
        return out

    def select(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.select(rows)

    def reserve(self, slots: int) -> None:
        """Make every layer's buffers hold at least ``slots`` slots."""
        for layer in self.layers:
            layer.reserve(slots)


# ----------------------------------------------------------------------------------------------
# Masks: which slots each new token of each row sees
# ----------------------------------------------------------------------------------------------


def ragged_causal_visible(write_at: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """bool [B, n, width]: query i of row b (written at ``write_at[b] + i``) sees slots ``<=`` its own.
    Every earlier slot of the row is committed or a tentative entry of the same chain."""
    slots = torch.arange(width, device=write_at.device)
    own = write_at[:, None] + torch.arange(n, device=write_at.device)
    return slots[None, None, :] <= own[:, :, None]


def ragged_tree_visible(root: torch.Tensor, ancestors: torch.Tensor, width: int) -> torch.Tensor:
    """bool [B, n, width]: query i of row b sees every slot before the row's root (``root[b]``) and
    the slots ``root[b] + j`` of its tree ancestors j (``ancestors`` [B, n, N]: itself included)."""
    B, n, N = ancestors.shape
    canvas = max(width, int(root.max()) + N) if B else width
    slots = torch.arange(canvas, device=root.device)
    vis = (slots[None, None, :] < root[:, None, None]).expand(B, n, canvas).clone()
    cols = (root[:, None] + torch.arange(N, device=root.device))[:, None, :].expand(B, n, N)
    vis.scatter_(2, cols, ancestors)
    return vis[:, :, :width]


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, n, width] of ``dtype``: 0 where visible, the dtype's minimum elsewhere (what eager and
    SDPA attention both take as a 4-D mask)."""
    m = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return m.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]


# ----------------------------------------------------------------------------------------------
# The Hugging Face implementation
# ----------------------------------------------------------------------------------------------


class SequenceCache:
    """B sequences through one Hugging Face model, KV-cached (implements :class:`ModelAdapter`).

    ``lens[i]`` tokens of row i have KV entries (slots ``0..lens[i]-1``); ``pending[i]`` are
    committed tokens not forwarded yet (the root of the next draft last). Speculative tokens are
    forwarded into slots past ``lens[i]`` and :meth:`keep` keeps the accepted ones (moving a tree
    path in place); the prefix is never recomputed.

    Token ids are the TARGET's: ``vocab_size`` is the target's vocabulary; the model's logits are
    cut or padded with -inf to it (drafters with a different vocabulary: absent tokens get zero
    draft probability), and ids the model has no embedding for are fed as ``unk_id``.

    ``timed=True`` adds the time inside forwards to ``forward_s`` (on CUDA it synchronises around
    each forward; leave it off where nothing reads it).
    """

    def __init__(self, model: nn.Module, vocab_size: int | None = None, fused_tree_attention: bool = False,
                 *, timed: bool = False, pad_id: int | None = None) -> None:
        from .models import cache_kwarg

        self.model = model
        self.vocab_size = vocab_size
        # whole-tree forwards pass the packed mask to specdec_tree attention instead of a dense mask
        self.fused = fused_tree_attention
        emb = model.get_input_embeddings()
        self.num_embeddings = emb.num_embeddings
        unk = getattr(model.config, "unk_token_id", None)
        self.unk_id = int(unk) if isinstance(unk, int) and 0 <= unk < self.num_embeddings else 0
        # padding ids fill the rows of a forward shorter than its longest; never the image token
        # (LLaVA counts image tokens to place image features)
        self.pad_id = self.unk_id if pad_id is None else int(pad_id)
        # ids at or past the embedding table exist only when the token ids come from a larger
        # vocabulary (a drafter's smaller table; a target whose output layer is wider than its
        # input table): only then is every forward's max id read (a device sync on CUDA)
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        widest = vocab_size or getattr(out, "out_features", None)
        self._may_exceed = bool(self.num_embeddings) and (widest is None or widest > self.num_embeddings)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.calls = 0
        self.timed = timed
        self.forward_s = 0.0
        self._sync = timed and self.device.type == "cuda"
        self._cache_kw = cache_kwarg(model)
        self.cache = RaggedKVCache()
        self.lens: list[int] = []
        self.pending: list[list[int]] = []
        self.tentative: list[int] = []
        # each row's next-token logits while its root is cached but nothing followed (after prefill)
        self.root_logits: list[torch.Tensor | None] = []

    @property
    def batch_size(self) -> int:
        return len(self.lens)

    # -- forwards --------------------------------------------------------------------------------

    def _ids(self, rows: Sequence[Sequence[int]], n: int) -> torch.Tensor:
        padded = [list(r) + [self.pad_id] * (n - len(r)) for r in rows]
        ids = torch.tensor(padded, dtype=torch.long, device=self.device)
        if self._may_exceed and int(ids.max()) >= self.num_embeddings:
            ids = torch.where(ids >= self.num_embeddings, torch.full_like(ids, self.unk_id), ids)
        return ids

    def _align(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        V = self.vocab_size
        if V is None or logits.shape[-1] == V:
            return logits
        if logits.shape[-1] > V:
            return logits[..., :V]
        pad = logits.new_full((*logits.shape[:-1], V - logits.shape[-1]), float("-inf"))
        return torch.cat([logits, pad], -1)

    def _forward(self, ids: torch.Tensor, write_at: Sequence[int], positions: torch.Tensor,
                 visible: torch.Tensor | None, *, keep_all: bool | torch.Tensor = True, **kw) -> torch.Tensor:
        self.cache.plan_write(write_at, ids.shape[1], self.device)
        keep = keep_all if isinstance(keep_all, torch.Tensor) else 0 if keep_all else 1
        if visible is not None:
            kw["attention_mask"] = additive_mask(visible, self.dtype)
        if self.timed:
            if self._sync:
                torch.cuda.synchronize(self.device)
            t = time.perf_counter()
        out = self.model(input_ids=ids, **{self._cache_kw: self.cache}, use_cache=True,
                         position_ids=positions, logits_to_keep=keep, **kw)
        logits = self._align(out.logits)
        if self.timed:
            if self._sync:
                torch.cuda.synchronize(self.device)
            self.forward_s += time.perf_counter() - t
        self.calls += 1
        return logits

    def prefill(self, prompts: Sequence[Sequence[int]], **kw) -> None:
        """Start B sequences: forward every prompt whole, in one right-padded forward
        (``pixel_values`` / ``image_features`` in ``kw``), and keep each row's next-token logits
        for the first round (its root, the prompt's last token, is then already cached: the same
        forwards as Hugging Face generate)."""
        prompts = [list(p) for p in prompts]
        if not prompts or any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        B = len(prompts)
        self.cache = RaggedKVCache()
        self.tentative = [0] * B
        self.pending = [[] for _ in range(B)]
        n = max(len(p) for p in prompts)
        zeros = torch.zeros(B, dtype=torch.long, device=self.device)
        pos = torch.arange(n, device=self.device)[None].expand(B, n)
        # only the rows' last positions go through the output layer (a [B, P, V] float tensor of
        # every position would be hundreds of MB for long prompts)
        last = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long, device=self.device)
        keep = torch.unique(last)
        logits = self._forward(self._ids(prompts, n), [0] * B, pos, ragged_causal_visible(zeros, n, n),
                               keep_all=keep, **kw)
        at = torch.searchsorted(keep, last)
        rows = logits[torch.arange(B, device=self.device), at]
        self.root_logits = list(rows)
        self.lens = [len(p) for p in prompts]

    def _stored_roots(self, caller: str, shift: list[int]) -> torch.Tensor:
        """[B, 1, V]: the stored root logits, when no row has anything to forward (no model call)."""
        if not all(shift):
            raise ValueError(f"{caller}: no row has anything to forward")
        out = torch.stack(self.root_logits)[:, None]
        self.root_logits = [None] * self.batch_size
        return out

    def _with_roots(self, logits: torch.Tensor, shift: list[int]) -> torch.Tensor:
        """Put the stored root logits in front of the rows that had them (``shift[i] == 1``)."""
        if not any(shift):
            return logits
        B, n, V = logits.shape
        out = logits.new_empty(B, n + 1, V)
        for i in range(B):
            if shift[i]:
                out[i, 0] = self.root_logits[i]
                out[i, 1:] = logits[i]
                self.root_logits[i] = None
            else:
                out[i, :n] = logits[i]
                out[i, n] = logits[i, -1]
        return out

    def forward_chains(self, extra: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
        """Forward each row's pending tokens, then ``extra[i]`` (causally, after the row's tentative
        entries). Returns (logits [B, N, V], first): ``logits[i, first[i] - 1 + j]`` is the law
        after the root and ``j`` tokens of ``extra[i]`` (rows shorter than N are padded). A row
        whose root is cached (first round) gets its stored logits at ``first[i] - 1 = 0``."""
        B = self.batch_size
        shift = [int(not self.pending[i] and self.root_logits[i] is not None) for i in range(B)]
        rows = [self.pending[i] + list(extra[i]) for i in range(B)]
        first = [len(p) if p else s for p, s in zip(self.pending, shift, strict=True)]
        n = max(len(r) for r in rows)
        if n == 0:
            return self._stored_roots("forward_chains", shift), first
        write = [self.lens[i] + self.tentative[i] for i in range(B)]
        w = torch.tensor(write, dtype=torch.long, device=self.device)
        pos = w[:, None] + torch.arange(n, device=self.device)
        visible = ragged_causal_visible(w, n, max(write) + n)
        logits = self._with_roots(self._forward(self._ids(rows, n), write, pos, visible), shift)
        for i in range(B):
            if self.pending[i]:
                # pending tokens are committed: they join the prefix; the root is the last of them
                self.lens[i] += len(self.pending[i])
                self.tentative[i] = len(extra[i])
                self.root_logits[i] = None
            else:
                self.tentative[i] += len(extra[i])
            self.pending[i] = []
        return logits, first

    def root_slots(self) -> list[int]:
        """The slot of each row's root once its pending tokens are forwarded."""
        return [self.lens[i] + len(self.pending[i]) - 1 for i in range(self.batch_size)]

    def forward_tree(self, tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor,
                     start: Sequence[int]) -> torch.Tensor:
        """Logits [B, M, V] of tree nodes ``start[i]..num_nodes[i]-1`` of each row, in one forward;
        ``logits[i, j]`` belongs to node ``start[i] + j`` (rows with fewer nodes are padded).

        ``tokens``/``parents`` [B, N] are the trees in the format of specdec_kernels (node 0 = the
        root, the row's last committed token; padding past ``num_nodes``). With ``start[i] == 0`` the
        row's pending tokens are forwarded first (causally), or, when its root is cached (first
        round), its stored logits are node 0's. With ``start[i] > 0`` nodes ``1..start[i]-1`` must
        be the row's tentative entries; rows with ``start[i] >= num_nodes[i]`` forward nothing.
        Node j's entry goes to root slot + j.
        """
        B, N = tokens.shape
        counts = num_nodes.tolist()
        shift = [int(start[i] == 0 and not self.pending[i] and self.root_logits[i] is not None)
                 for i in range(B)]
        eff = [1 if shift[i] else start[i] for i in range(B)]
        if not any(eff[i] < counts[i] for i in range(B)):  # nothing to forward: roots only
            return self._stored_roots("forward_tree", shift)
        roots = self.root_slots()
        rows: list[list[int]] = []
        write: list[int] = []
        pre: list[int] = []  # pending tokens before the root, forwarded in front of the tree
        for i in range(B):
            s = eff[i]
            if s >= counts[i]:  # nothing to forward in this row (its tree stopped growing)
                pre.append(0)
                write.append(self.lens[i] + self.tentative[i])
                rows.append([])
            elif s == 0:
                p = self.pending[i]
                if not p:
                    raise ValueError(f"forward_tree: row {i} has no pending root")
                pre.append(len(p) - 1)
                write.append(self.lens[i])
                rows.append(p[:-1] + tokens[i, : counts[i]].tolist())
            else:
                if self.pending[i] or self.tentative[i] != s - 1:
                    raise ValueError(f"forward_tree: row {i} must hold nodes 1..{s - 1} as tentative entries")
                pre.append(0)
                write.append(self.lens[i] + self.tentative[i])
                rows.append(tokens[i, s : counts[i]].tolist())
        n = max(len(r) for r in rows)
        dev = self.device
        root = torch.tensor(roots, dtype=torch.long, device=dev)
        width = max(w + n for w in write)
        anc = sk.tree_attention_mask(parents, num_nodes=num_nodes, check=False)  # [B, N, N]
        depth = sk.tree_position_ids(parents, 0, num_nodes=num_nodes, check=False)  # [B, N]
        # query q of row i is pending token q (q < pre[i]) or tree node eff[i] + q - pre[i]
        q = torch.arange(n, device=dev)
        pre_t = torch.tensor(pre, dtype=torch.long, device=dev)
        st = torch.tensor(eff, dtype=torch.long, device=dev)
        node = (st[:, None] + q[None] - pre_t[:, None]).clamp(0, N - 1)  # [B, n]
        is_pre = q[None] < pre_t[:, None]
        w_t = torch.tensor(write, dtype=torch.long, device=dev)
        slot = w_t[:, None] + q[None]
        pos = torch.where(is_pre, slot, root[:, None] + depth.gather(1, node))
        kw = {}
        fused = (self.fused and all(s == 0 for s in eff) and all(p == 0 for p in pre)
                 and N <= sk.TREE_ATTENTION_MAX_NODES and n == N)
        if fused:
            kw[MASK_KWARG] = sk.tree_attention_mask(parents, num_nodes=num_nodes, packed=True, check=False)
            kw[ROOT_KWARG] = root.to(torch.int32)
            visible = None
            self.cache.plan_write(write, n, dev)
        else:
            tree_vis = ragged_tree_visible(root, anc.gather(1, node[:, :, None].expand(B, n, N)), width)
            causal = ragged_causal_visible(w_t, n, width)
            visible = torch.where(is_pre[:, :, None], causal, tree_vis)
        logits = self._forward(self._ids(rows, n), write, pos, visible, **kw)
        for i in range(B):
            if eff[i] >= counts[i]:
                continue
            if eff[i] == 0:
                self.lens[i] += len(self.pending[i])
                self.pending[i] = []
            self.tentative[i] = counts[i] - 1
        if any(pre):  # drop the pending tokens' rows: logits[i, j] is node eff[i] + j
            M = max(c - s for c, s in zip(counts, eff, strict=True))
            idx = (pre_t[:, None] + torch.arange(M, device=dev)).clamp(max=n - 1)
            logits = logits.gather(1, idx[:, :, None].expand(-1, -1, logits.shape[-1]))
        return self._with_roots(logits, shift)

    # -- after verification ------------------------------------------------------------------------

    def plan_keep(self, accepted_nodes: torch.Tensor, num_accepted: torch.Tensor) -> KeepPlan:
        """:func:`specdec.plans.kv_keep_plan` for this cache's rows (roots at ``lens - 1``, the
        tentative entries as the forwarded nodes)."""
        dev = accepted_nodes.device
        return kv_keep_plan(accepted_nodes, num_accepted,
                            torch.tensor(self.tentative, dtype=torch.long, device=dev),
                            torch.tensor([n - 1 for n in self.lens], dtype=torch.long, device=dev))

    def keep(self, plan: KeepPlan, pending: Sequence[Sequence[int]]) -> None:
        """Apply a :func:`specdec.plans.kv_keep_plan` (computed with ``root = lens - 1`` and
        ``forwarded = tentative``): keep the root and the planned nodes (moved in place where the
        path is off the first branch), drop every other tentative entry; ``pending[i]`` becomes row
        i's pending tokens (accepted tokens without an entry, then the correction or bonus)."""
        if bool(plan.moves.any()):
            roots = [n - 1 for n in self.lens]
            # compact_tree_kv copies slot root + 1 + j onto itself for every column j past a row's
            # kept nodes: trim the plan to the most kept, and make room for the longest such row
            M = int(plan.num_kept.max())
            self.cache.reserve(max(roots) + M + 1)
            sk.compact_tree_kv(self.cache.tensors(), plan.nodes[:, : M + 1],
                               torch.tensor(roots, dtype=torch.long, device=self.device),
                               num_accepted=plan.num_kept, check=False)
        self.lens = plan.length.tolist()
        self.tentative = [0] * self.batch_size
        self.pending = [list(p) for p in pending]
        self.root_logits = [None] * self.batch_size

    def select_rows(self, rows: Sequence[int]) -> None:
        idx = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.cache.select(idx)
        self.lens = [self.lens[r] for r in rows]
        self.pending = [self.pending[r] for r in rows]
        self.root_logits = [self.root_logits[r] for r in rows]
        self.tentative = [self.tentative[r] for r in rows]

    # -- inspection ------------------------------------------------------------------------------

    def kv(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row ``row``'s committed entries: per layer (keys [H, lens, D], values [H, lens, D])."""
        L = self.lens[row]
        return [(layer.keys[row, :, :L], layer.values[row, :, :L]) for layer in self.cache.layers
                if layer.keys is not None]
