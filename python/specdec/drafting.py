"""Drafting one round for B rows: chains under a draft-length policy, or trees (i.i.d., Gumbel-Top-k,
Stochastic Beam Search), each drafted from a :class:`~specdec.adapter.ModelAdapter` whose rows
hold their roots (the last committed tokens) as pending tokens; and what verification needs back.

Randomness is the kernels' counter-based Philox with one seed per ROW and a per-row offset that
advances by each op's documented stride (and by one per node where a call draws for several nodes
of a row), so a row's draws depend on its own seed and history only, never on its batch neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

import specdec_kernels as sk
from specdec_kernels import policies as _policies

from .adapter import ModelAdapter
from .plans import Trees, append_children, level_children, roots


class Sampler:
    """Temperature / top-k / top-p, applied identically to target and drafter (docs/algorithms.md §1),
    and the Philox streams of the rows of one generate call (``seeds[b]`` for row b). Temperature 0
    means greedy."""

    def __init__(self, temperature: float, top_k: int, top_p: float, seeds: Sequence[int] | int,
                 device: torch.device | str = "cpu") -> None:
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.seeds = [int(seeds)] if isinstance(seeds, int) else [int(s) for s in seeds]
        self.offsets = [0] * len(self.seeds)
        self.device = torch.device(device)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain(self) -> bool:
        """Temperature only (no top-k / top-p): the draft law is softmax(logits / T), so the Gumbel
        ops draw from the logits with their own temperature, and no log(q) pass over the vocabulary
        is needed (one full pass per draft step saved; the law is the same up to float rounding)."""
        return self.top_k == 0 and self.top_p == 1.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        shape = logits.shape
        p = sk.sampling_probs(logits.reshape(-1, shape[-1]), temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, check=False)
        return p.reshape(shape)

    def streams(self, rows: Sequence[int], stride: int, device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(seed [R], offset [R]) for one call drawing for ``rows`` (batch rows, repeats allowed:
        each occurrence gets the next ``stride`` draws of its row), on ``device`` (default: the
        sampler's)."""
        offs = []
        for r in rows:
            offs.append(self.offsets[r])
            self.offsets[r] += stride
        dev = self.device if device is None else device
        seed = torch.tensor([self.seeds[r] for r in rows], dtype=torch.long, device=dev)
        return seed, torch.tensor(offs, dtype=torch.long, device=dev)

    def draw(self, logits: torch.Tensor, rows: Sequence[int], k: int, probs: torch.Tensor | None = None
             ) -> torch.Tensor:
        """k distinct tokens per logits row [R, V] (row r drafts for batch row ``rows[r]``), drawn
        without replacement from its sampling law; ``probs`` (``self.probs(logits)``) is needed only
        with top-k / top-p. -1 where a row has fewer than k tokens of positive probability."""
        seed, off = self.streams(rows, sk.GUMBEL_OFFSET_STRIDE, logits.device)
        if self.plain:
            return sk.gumbel_topk(logits, k, temperature=self.temperature, seed=seed, offset=off,
                                  check=False).tokens
        p = self.probs(logits) if probs is None else probs
        return sk.gumbel_topk(torch.log(p), k, seed=seed, offset=off, check=False).tokens

    def log_law(self, logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Logits of the sampling law (log q up to a constant per row)."""
        return logits * (1.0 / self.temperature) if self.plain else torch.log(probs)

    def select_rows(self, rows: Sequence[int]) -> None:
        """Nothing to do: the streams are keyed by the original batch row."""


@dataclass
class Draft:
    """One round's drafts for the rows still decoding, in the tree format of specdec_kernels (a chain
    is nodes 1..K with parent i - 1).

    trees: tokens/parents [B, N], num_nodes [B] (1: nothing drafted). q: the draft laws, None for
    deterministic drafts (greedy, prompt lookup): a chain's [B, K, V] (row j: the law of draft
    j + 1; one-hot rows for copied drafts), a tree's [B, N, V] (rows of internal nodes). chain:
    verify as chains (:func:`specdec_kernels.verify_chain`) or trees. depth / copied: per row, the
    depth drafted and how many drafts were copied from the context.
    """

    trees: Trees
    q: torch.Tensor | None
    chain: bool
    depth: list[int]
    copied: list[int] = field(default_factory=list)

    @property
    def num_drafted(self) -> list[int]:
        return [n - 1 for n in self.trees.num_nodes.tolist()]


def chain_trees(root_tokens: Sequence[int], drafts: Sequence[Sequence[int]], device) -> Trees:
    """Chains as trees: row b is ``root_tokens[b]`` then ``drafts[b]`` (padded with -1)."""
    K = max((len(d) for d in drafts), default=0)
    toks = [[r, *d] + [-1] * (K - len(d)) for r, d in zip(root_tokens, drafts, strict=True)]
    tokens = torch.tensor(toks, dtype=torch.long, device=device).reshape(len(drafts), K + 1)
    parents = torch.arange(-1, K, dtype=torch.long, device=device).expand(len(drafts), K + 1).clone()
    num = torch.tensor([len(d) + 1 for d in drafts], dtype=torch.long, device=device)
    return Trees(tokens, parents, num)


def _last_rows(logits: torch.Tensor, first: Sequence[int]) -> torch.Tensor:
    """logits [B, N, V] -> [B, V]: each row's law after its root (position ``first[b] - 1``)."""
    idx = torch.tensor([f - 1 for f in first], dtype=torch.long, device=logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]


def one_hot_rows(tokens: Sequence[int], V: int, device) -> torch.Tensor:
    out = torch.zeros(len(tokens), V, device=device)
    if tokens:
        out[torch.arange(len(tokens), device=device), torch.tensor(list(tokens), device=device)] = 1.0
    return out


def draft_chains(
    drafter: ModelAdapter,
    root_tokens: Sequence[int],
    rows: Sequence[int],
    sampler: Sampler,
    policy,
    max_len: Sequence[int],
    copies: Sequence[list[int] | None] | None = None,
    copy: Callable[[int, list[int]], list[int]] | None = None,
) -> Draft:
    """Up to ``max_len[i]`` tokens per row autoregressively, one drafter forward per step for all
    rows; ``policy`` (a specdec_kernels.policies policy over the B rows) may stop rows earlier.

    ``copies[i]``: prompt lookup's copy for row i this round (it drafts nothing; one-hot drafts);
    ``copy(i, drafted)``: after each drafted token of row i, the continuation the context offers
    for the text so far; a non-empty one is appended as one-hot drafts (q is a point mass: the copy
    is a function of the text before it) and ends the row's chain. ``rows[i]``: row i's batch row
    (its Philox stream)."""
    B = len(root_tokens)
    copies = list(copies) if copies is not None else [None] * B
    logits, first = drafter.forward_chains([[] for _ in range(B)])
    row = _last_rows(logits, first)
    V = row.shape[-1]
    dev = row.device
    policy.begin_round(B, dev)
    static = isinstance(policy, _policies.StaticLength)
    toks: list[list[int]] = [list(c) if c else [] for c in copies]
    drafted = [0] * B  # tokens drawn from the drafter (before any copy)
    ext = [len(c) if c else 0 for c in copies]
    live = [not copies[i] and max_len[i] > 0 for i in range(B)]
    step_q: list[torch.Tensor] = []
    while any(live):
        q = None if sampler.greedy else sampler.probs(row)
        # the policy judges the law actually drafted from (after temperature / top-k / top-p); a
        # static length reads nothing
        judged = row if q is None or static else sampler.log_law(row, q)
        stop = policy.should_stop(judged).tolist()
        live = [live[i] and not stop[i] for i in range(B)]
        act = [i for i in range(B) if live[i]]
        if not act:
            break
        if q is None:
            picks = row.argmax(-1).tolist()
            drawn = {i: picks[i] for i in act}
        else:
            if len(act) == B:  # every row draws: no gather of [B, V] rows
                t = sampler.draw(row, list(rows), 1, q)[:, 0].tolist()
            else:
                idx = torch.tensor(act, dtype=torch.long, device=dev)
                t = sampler.draw(row[idx], [rows[i] for i in act], 1, q[idx])[:, 0].tolist()
            drawn = dict(zip(act, t, strict=True))
            step_q.append(q)
        nxt: list[list[int]] = [[] for _ in range(B)]
        for i in act:
            toks[i].append(drawn[i])
            drafted[i] += 1
            if copy is not None:
                more = copy(i, toks[i])
                if more:
                    toks[i] += more
                    ext[i] = len(more)
                    live[i] = False
                    continue
            if drafted[i] >= max_len[i]:
                live[i] = False
            else:
                nxt[i] = [drawn[i]]
        if not any(live):
            break
        logits, _ = drafter.forward_chains(nxt)
        row = logits[:, 0]
    trees = chain_trees(root_tokens, toks, dev)
    K = trees.tokens.shape[1] - 1
    q = None
    if not sampler.greedy and K and (step_q or any(ext)):
        # verify_chain reads the K draft rows only: no row for the last node
        q = torch.zeros(B, K, V, device=dev)
        if step_q:
            S = len(step_q)
            q[:, : min(S, K)] = torch.stack(step_q, 1)[:, :K]
        for i in range(B):
            if ext[i]:
                q[i, drafted[i] : drafted[i] + ext[i]] = one_hot_rows(toks[i][drafted[i]:], V, dev)
    return Draft(trees, q, True, [len(t) for t in toks], ext)


def draft_trees(
    drafter: ModelAdapter,
    root_tokens: Sequence[int],
    rows: Sequence[int],
    sampler: Sampler,
    *,
    branching: tuple[int, ...] | None = None,
    width: int | None = None,
    depth: Sequence[int],
    replacement: bool = False,
) -> Draft:
    """A tree per row of up to ``depth[i]`` levels, drafted level by level with one drafter forward
    per level for all rows.

    ``branching`` (b_0, ..): every node of level l gets b_l children, distinct (Gumbel-Top-k, RSD-C)
    or i.i.d. (``replacement=True``, SpecInfer). ``width``: Stochastic Beam Search (RSD-S), the W best
    expansions per level. Greedy sampling drafts the top-b tokens (top-W sequences for beams).
    """
    B = len(root_tokens)
    logits, first = drafter.forward_chains([[] for _ in range(B)])
    level_logits = _last_rows(logits, first)[:, None]  # [B, 1, V]: the roots' laws
    V = level_logits.shape[-1]
    dev = level_logits.device
    trees = roots(torch.tensor(list(root_tokens), dtype=torch.long, device=dev))
    start = torch.zeros(B, dtype=torch.long, device=dev)
    size = torch.ones(B, dtype=torch.long, device=dev)
    qlevels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (start, size, q [B, L, V])
    levels = [0] * B
    dmax = max(depth, default=0)
    want = torch.tensor(list(depth), dtype=torch.long, device=dev)
    phi = torch.zeros(B, 1, device=dev)
    G = torch.zeros(B, 1, device=dev)
    for level in range(dmax):
        size = torch.where(want > level, size, torch.zeros_like(size))
        sizes = size.tolist()
        if not any(sizes):
            break
        if level > 0:
            st = [int(s) if z else int(n) for s, z, n in zip(start.tolist(), sizes, trees.num_nodes.tolist(),
                                                             strict=True)]
            level_logits = drafter.forward_tree(trees.tokens, trees.parents, trees.num_nodes, st)
        L = max(sizes)
        level_logits = level_logits[:, :L]
        q = None if sampler.greedy else sampler.probs(level_logits)
        if q is not None:
            qlevels.append((start, size, q))
        live = torch.arange(L, device=dev)[None, :] < size[:, None]  # [B, L]
        if width is not None:
            kids, kid_par, phi, G = _beam_level(level_logits, q, live, phi, G, width, sampler, rows)
            kid_par = torch.where(kids >= 0, start[:, None] + kid_par, kid_par)
        else:
            b = branching[level]
            kids = _children(level_logits, q, live, min(b, V), sampler, rows, replacement)
            kids, kid_par = level_children(kids, start, size)
        before = trees.num_nodes
        trees = append_children(trees, kids, kid_par)
        grown = (trees.num_nodes - before).tolist()
        levels = [lv + (g > 0) for lv, g in zip(levels, grown, strict=True)]
        start, size = before, trees.num_nodes - before
    qt = None
    if not sampler.greedy:
        # rows of internal nodes; the leaves' rows are never read by verify_tree (left unset
        # rather than zeroed: a memset of B x N x V floats per round for nothing)
        N = trees.tokens.shape[1]
        qt = torch.empty(B, N, V, device=dev)
        for st, sz, q in qlevels:
            L = q.shape[1]
            live = torch.arange(L, device=dev)[None, :] < sz[:, None]
            b_idx, j = live.nonzero(as_tuple=True)
            qt[b_idx, st[b_idx] + j] = q[b_idx, j]
    return Draft(trees, qt, False, levels, [0] * B)


def _children(logits, q, live, b: int, sampler: Sampler, rows, replacement: bool) -> torch.Tensor:
    """[B, L, b]: children of each live level node (-1 elsewhere)."""
    B, L, V = logits.shape
    out = torch.full((B, L, b), -1, dtype=torch.long, device=logits.device)
    b_idx, j = live.nonzero(as_tuple=True)
    if b_idx.numel() == 0:
        return out
    lg = logits[b_idx, j]
    if q is None:
        out[b_idx, j] = torch.topk(lg, b, -1).indices
        return out
    qq = q[b_idx, j]
    who = [rows[i] for i in b_idx.tolist()]
    if replacement:
        kids = sampler.draw(lg.repeat_interleave(b, 0), [w for w in who for _ in range(b)], 1,
                            qq.repeat_interleave(b, 0)).reshape(-1, b)
    else:
        kids = sampler.draw(lg, who, b, qq)
    out[b_idx, j] = kids
    return out


def _beam_level(logits, q, live, phi, G, width: int, sampler: Sampler, rows):
    """One Stochastic Beam Search level for every row: (tokens [B, W], beam index [B, W], phi, G);
    -1 tokens where a row has fewer expansions (or drafts no level)."""
    B, L, V = logits.shape
    phi = phi[:, :L]
    G = G[:, :L]
    if q is None:  # greedy beam search: the W most likely continuations of the live beams
        logq = torch.log_softmax(logits, -1)
        flat = torch.where(live[:, :, None], phi[:, :, None] + logq, torch.full_like(logq, float("-inf")))
        best = torch.topk(flat.reshape(B, L * V), min(width, L * V), -1)
        ok = torch.isfinite(best.values)
        tok = torch.where(ok, best.indices % V, torch.full_like(best.indices, -1))
        beam = torch.where(ok, best.indices // V, torch.full_like(best.indices, -1))
        return tok, beam, best.values, torch.zeros_like(best.values)
    seed, off = sampler.streams(list(rows), sk.GUMBEL_OFFSET_STRIDE, logits.device)
    # the beam step normalises its rows itself (log_softmax(logits / T))
    step = sk.stochastic_beam_step(
        logits if sampler.plain else torch.log(q),
        torch.where(live, phi, torch.zeros_like(phi)),
        torch.where(live, G, torch.zeros_like(G)),
        width,
        temperature=sampler.temperature if sampler.plain else 1.0,
        beam_mask=live,
        seed=seed,
        offset=off,
        check=False,
    )
    return step.tokens, step.parents, step.log_probs, step.scores
