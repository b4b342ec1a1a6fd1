"""Drafting one round: a chain under a draft-length policy, or a tree (i.i.d., Gumbel-Top-k, Stochastic
Beam Search). Every function drafts from a :class:`~specdec.models.SequenceCache` whose root (the
last committed token) is already forwarded or pending, and returns what verification needs.

Randomness is the kernels' counter-based Philox: one seed per generate call and an offset that
advances by each op's documented stride, so a seed reproduces a run exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import specdec_kernels as sk
from specdec_kernels import policies as _policies

from .models import SequenceCache


class Sampler:
    """Temperature / top-k / top-p, applied identically to target and drafter (docs/algorithms.md §1),
    and the Philox stream of one generate call. Temperature 0 means greedy."""

    def __init__(self, temperature: float, top_k: int, top_p: float, seed: int) -> None:
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.offset = 0

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
        return sk.sampling_probs(
            logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, check=False
        )

    def take(self, stride: int) -> int:
        off = self.offset
        self.offset += stride
        return off

    def distinct(self, probs: torch.Tensor, k: int) -> torch.Tensor:
        """k distinct tokens per row drawn without replacement from ``probs`` [R, V] (-1 when the row
        has fewer than k tokens of positive probability)."""
        return sk.gumbel_topk(
            torch.log(probs), k, seed=self.seed, offset=self.take(sk.GUMBEL_OFFSET_STRIDE), check=False
        ).tokens

    def draw(self, logits: torch.Tensor, probs: torch.Tensor | None, k: int) -> torch.Tensor:
        """k distinct tokens per row from the sampling law of ``logits`` [R, V], whose probabilities
        ``probs`` (``self.probs(logits)``) are needed only with top-k / top-p (None otherwise)."""
        if self.plain:
            return sk.gumbel_topk(logits, k, temperature=self.temperature, seed=self.seed,
                                  offset=self.take(sk.GUMBEL_OFFSET_STRIDE), check=False).tokens  # fmt: skip
        return self.distinct(self.probs(logits) if probs is None else probs, k)

    def log_law(self, logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Logits of the sampling law (log q up to a constant per row)."""
        return logits * (1.0 / self.temperature) if self.plain else torch.log(probs)


@dataclass
class Draft:
    """One round's draft, in the tree format of specdec_kernels (a chain is nodes 1..K, parent i-1).

    tokens/parents: [1, N] (node 0 = root); q: the draft laws (None when greedy): a tree's [1, N, V]
    (rows of internal nodes; leaf rows unset), a chain's [1, K, V] (row i: the law of draft i + 1);
    forwarded: nodes 1..forwarded have KV entries in the drafter's cache right after ``root`` (its
    slot); depth: tree depth drafted; copied: how many of the drafts were copied from the context
    (prompt lookup; the chain's last ones)."""

    tokens: torch.Tensor
    parents: torch.Tensor
    q: torch.Tensor | None
    root: int
    forwarded: int
    depth: int
    copied: int = 0

    @property
    def num_drafted(self) -> int:
        return self.tokens.shape[1] - 1


def draft_chain(
    drafter: SequenceCache,
    root_token: int,
    sampler: Sampler,
    policy,
    max_len: int,
    copy: Callable[[list[int]], list[int]] | None = None,
) -> Draft:
    """Up to ``max_len`` tokens autoregressively; ``policy`` may stop earlier (AdaEDL, confidence).

    ``copy(drafted)`` (prompt lookup): after each drafted token, the continuation the context offers
    for the text so far; a non-empty one is appended as one-hot drafts (q is a point mass: the copy
    is a function of the text before it) and ends the chain."""
    root = drafter.root_slot()
    row = drafter.logits_through()[-1]
    policy.begin_round(1, row.device)
    static = isinstance(policy, _policies.StaticLength)
    toks: list[int] = []
    qs: list[torch.Tensor] = []
    forwarded = 0
    ext: list[int] = []
    for i in range(max_len):
        q = None if sampler.greedy else sampler.probs(row[None])
        # the policy judges the law actually drafted from (after temperature / top-k / top-p); a
        # static length reads nothing
        judged = row[None] if q is None or static else sampler.log_law(row[None], q)
        if bool(policy.should_stop(judged)[0]):
            break
        if q is None:
            t = int(row.argmax())
        else:
            t = int(sampler.draw(row[None], q, 1)[0, 0])
            qs.append(q[0])
        toks.append(t)
        if copy is not None:
            ext = copy(toks)
            if ext:
                toks += ext
                if q is not None:
                    onehot = torch.zeros(len(ext), q.shape[-1], device=q.device)
                    onehot[torch.arange(len(ext), device=q.device), torch.tensor(ext, device=q.device)] = 1.0
                    qs += list(onehot)
                break
        if i + 1 < max_len:
            row = drafter.logits_through([t])[-1]
            forwarded += 1
    K = len(toks)
    dev = row.device
    tokens = torch.tensor([[root_token] + toks], dtype=torch.long, device=dev)
    parents = torch.arange(-1, K, dtype=torch.long, device=dev)[None]
    # verify_chain reads the K draft rows only: no row for the last node
    q = None if sampler.greedy or not K else torch.stack(qs)[None]
    return Draft(tokens, parents, q, root, forwarded, K, copied=len(ext))


def draft_tree(
    drafter: SequenceCache,
    root_token: int,
    sampler: Sampler,
    *,
    branching: tuple[int, ...] | None = None,
    width: int | None = None,
    depth: int,
    replacement: bool = False,
) -> Draft:
    """A tree of ``depth`` levels, drafted level by level with one drafter forward per level.

    ``branching`` (b_0, ..): every node of level l gets b_l children, distinct (Gumbel-Top-k, RSD-C)
    or i.i.d. (``replacement=True``, SpecInfer). ``width``: Stochastic Beam Search (RSD-S), the W best
    expansions per level. Greedy sampling drafts the top-b tokens (top-W sequences for beams).
    """
    root = drafter.root_slot()
    rows = drafter.logits_through()[-1:]
    dev = rows.device
    V = rows.shape[-1]
    tokens = [root_token]
    parents = [-1]
    qrows: list[torch.Tensor] = []  # q of internal nodes, in node order from node 0
    start, end = 0, 1
    phi = torch.zeros(1, device=dev)
    G = torch.zeros(1, device=dev)
    levels = 0
    for level in range(depth):
        if level > 0:
            t_tok = torch.tensor([tokens], dtype=torch.long, device=dev)
            t_par = torch.tensor([parents], dtype=torch.long, device=dev)
            rows = drafter.tree_logits(t_tok, t_par, start, end)
        q = None if sampler.greedy else sampler.probs(rows)
        if q is not None:
            qrows.append(q)
        new_tok: list[int] = []
        new_par: list[int] = []
        if width is not None:
            if q is None:  # greedy beam search: the W most likely continuations of the live beams
                logq = torch.log_softmax(rows, -1)
                flat = (phi[:, None] + logq).flatten()
                k = min(width, int(torch.isfinite(flat).sum()))
                best = torch.topk(flat, k)
                beam, tok = best.indices // V, best.indices % V
                phi = best.values
            else:
                # the beam step normalises its rows itself (log_softmax(logits / T))
                step = sk.stochastic_beam_step(
                    (rows if sampler.plain else torch.log(q))[None],
                    phi[None],
                    G[None],
                    width,
                    temperature=sampler.temperature if sampler.plain else 1.0,
                    seed=sampler.seed,
                    offset=sampler.take(sk.GUMBEL_OFFSET_STRIDE),
                    check=False,
                )
                live = step.tokens[0] >= 0
                beam, tok = step.parents[0][live], step.tokens[0][live]
                phi, G = step.log_probs[0][live], step.scores[0][live]
            new_par = [start + int(b) for b in beam.tolist()]
            new_tok = tok.tolist()
        else:
            b = branching[level]
            if q is None:
                kids = torch.topk(rows, min(b, V), -1).indices
            elif replacement:
                kids = sampler.draw(rows.repeat_interleave(b, 0), q.repeat_interleave(b, 0), 1).reshape(-1, b)
            else:
                kids = sampler.draw(rows, q, min(b, V))
            for r, row_kids in enumerate(kids.tolist()):
                for t in row_kids:
                    if t >= 0:
                        new_par.append(start + r)
                        new_tok.append(t)
        if not new_tok:
            break
        tokens += new_tok
        parents += new_par
        start, end = end, end + len(new_tok)
        levels += 1
    N = len(tokens)
    t_tok = torch.tensor([tokens], dtype=torch.long, device=dev)
    t_par = torch.tensor([parents], dtype=torch.long, device=dev)
    qt = None
    if not sampler.greedy:
        # rows of nodes 0..start-1; the leaves' rows are never read by verify_tree (left unset
        # rather than zeroed: a memset of N x V floats per round for nothing)
        qt = torch.empty(1, N, V, device=dev)
        internal = torch.cat(qrows)[:start]
        qt[0, : internal.shape[0]] = internal
    # nodes of the last level were never forwarded through the drafter
    return Draft(t_tok, t_par, qt, root, start - 1, levels)
