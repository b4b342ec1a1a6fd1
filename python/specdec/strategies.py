"""One strategy object per method: ``draft(...)`` proposes this round's drafts for the rows still
decoding, ``verify(...)`` turns the target's logits over them into the accepted tokens.

The decoder (:class:`specdec.SpeculativeDecoder`) runs them on Hugging Face models through
:class:`specdec.adapter.SequenceCache`; an engine can call them with any
:class:`~specdec.adapter.ModelAdapter` for the drafter and its own target forward:

    draft = strategy.draft(round_)                       # drafter forwards (none for "ar", lookup)
    logits = <target forward of draft.trees: chain or tree>  # logits[i, j]: law after node j
    verdict = strategy.verify(draft, logits, round_.sampler, round_.rows)

Every rule is exact: the emitted tokens follow the target's law (docs/algorithms.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import specdec_kernels as sk

from .adapter import ModelAdapter
from .drafting import Draft, Sampler, chain_trees, draft_chains, draft_trees
from .plans import Trees
from .prompt_lookup import NgramIndex, PromptLookup


@dataclass
class Round:
    """What a strategy drafts from, for the B rows still decoding (in cache-row order).

    rows: each row's batch row (its Philox stream, its policy state); roots: each row's last
    committed token; budgets: how many tokens each row may still draft (its remaining new tokens
    minus the one every round emits); indices: prompt lookup's n-gram index per row (None without
    lookup); drafter: the drafter's adapter (None for "ar" and prompt lookup).
    """

    rows: list[int]
    roots: list[int]
    budgets: list[int]
    sampler: Sampler
    drafter: ModelAdapter | None = None
    indices: list[NgramIndex] | None = None


@dataclass
class Verdict:
    """Per row: ``tokens[i]`` the accepted drafts then the correction or bonus token; ``nodes[i]``
    the accepted nodes (depth order); as tensors for :func:`specdec.plans.kv_keep_plan`:
    ``accepted_nodes`` [B, N] (-1 padded) and ``num_accepted`` [B]."""

    tokens: list[list[int]]
    nodes: list[list[int]]
    accepted_nodes: torch.Tensor
    num_accepted: torch.Tensor


class Strategy:
    """Base: ``draft`` and ``verify`` for one method. ``chain`` strategies are verified as chains."""

    name = "strategy"
    #: siblings drawn i.i.d. (SpecInfer): verify_tree's replacement rule
    replacement = False

    def begin(self, batch_rows: int, device: torch.device | str) -> None:
        """A new generate call with ``batch_rows`` rows (per-row state starts afresh)."""

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep the per-row state of these cache rows only (finished rows left the batch)."""

    def draft(self, r: Round) -> Draft:
        raise NotImplementedError

    def verify(self, draft: Draft, logits: torch.Tensor, sampler: Sampler, rows: Sequence[int],
               rule: str = "token") -> Verdict:
        """``logits`` [B, N', V]: row i's target logits after node j at ``logits[i, j]`` (nodes
        ``0..num_nodes[i]-1``; a chain's node j is its j-th draft)."""
        return verify_draft(draft, logits, sampler, rows, rule, self.replacement)

    def observe(self, draft: Draft, verdict: Verdict) -> None:
        """After verification (policies adapt here)."""


def verify_draft(draft: Draft, logits: torch.Tensor, sampler: Sampler, rows: Sequence[int],
                 rule: str = "token", replacement: bool = False) -> Verdict:
    """Verify B drafts against the target's logits (chains with verify_chain, trees with
    verify_tree; greedy with their argmax rules) in one op call."""
    N = draft.trees.tokens.shape[1]
    logits = logits[:, :N]
    dev = logits.device
    # drafts live where the drafter ran; verification runs where the target's logits are
    trees = Trees(*(t.to(dev) for t in draft.trees))
    q = None if draft.q is None else draft.q.to(dev)
    B = trees.tokens.shape[0]
    if N == 1:  # nothing drafted anywhere: one target step per row
        row = logits[:, 0]
        if sampler.greedy:
            tok = row.argmax(-1)
        else:
            tok = sampler.draw(row, list(rows), 1)[:, 0]
        toks = tok.tolist()
        empty = torch.full((B, 1), -1, dtype=torch.long, device=dev)
        return Verdict([[t] for t in toks], [[] for _ in range(B)], empty, torch.zeros(B, dtype=torch.long,
                                                                                       device=dev))
    num = trees.num_nodes.to(dev)
    if draft.chain:
        d = trees.tokens[:, 1:]
        K = num - 1
        if sampler.greedy:  # rule "block" too: block verification of one-hot targets is argmax
            res = sk.verify_chain_greedy(d, logits, num_draft=K, check=False)
        else:
            seed, off = sampler.streams(list(rows), sk.VERIFY_CHAIN_OFFSET_STRIDE, dev)
            res = sk.verify_chain(d, sampler.probs(logits), q, num_draft=K, seed=seed, offset=off,
                                  rule=rule, check=False)
        n = res.num_accepted
        # [B, N] like a tree's (node indices < N, -1 padded): the chain's nodes 1..n
        col = torch.arange(1, N + 1, device=dev)
        acc_nodes = torch.where(col[None, :] <= n[:, None], col[None, :], torch.full_like(col, -1)[None])
    else:
        if sampler.greedy:
            res = sk.verify_tree_greedy(trees.tokens, trees.parents, logits, num_nodes=num, check=False)
        else:
            seed, off = sampler.streams(list(rows), sk.VERIFY_TREE_OFFSET_STRIDE, dev)
            res = sk.verify_tree(trees.tokens, trees.parents, sampler.probs(logits), q, num_nodes=num,
                                 replacement=replacement, seed=seed, offset=off, check=False)
        n = res.num_accepted
        acc_nodes = res.accepted_nodes
    ns = n.tolist()
    tok_rows = res.tokens.tolist()
    node_rows = acc_nodes.tolist()
    tokens = [tok_rows[i][: ns[i] + 1] for i in range(B)]
    nodes = [node_rows[i][: ns[i]] for i in range(B)]
    return Verdict(tokens, nodes, acc_nodes, n)


class AutoRegressive(Strategy):
    """"ar": the target alone, one token per row per round (the baseline)."""

    name = "ar"

    def draft(self, r: Round) -> Draft:
        dev = r.sampler.device
        return Draft(chain_trees(r.roots, [[] for _ in r.roots], dev), None, True, [0] * len(r.roots),
                     [0] * len(r.roots))


class Chain(Strategy):
    """"sd": chains from a drafter model under a draft-length policy, optionally ending with (or
    replaced by) a prompt-lookup copy (``copy`` beside the drafter)."""

    name = "sd"

    def __init__(self, gamma: int, make_policy: Callable[[], object], copy: PromptLookup | None = None,
                 copy_len: int = 10) -> None:
        self.gamma = gamma
        self.make_policy = make_policy
        self.copy = copy
        self.copy_len = copy_len
        self.policy = None

    def begin(self, batch_rows: int, device) -> None:
        self.policy = self.make_policy()
        self.policy.begin_round(batch_rows, device)

    def select_rows(self, rows: Sequence[int]) -> None:
        self.policy.select_rows(list(rows))

    def draft(self, r: Round) -> Draft:
        B = len(r.roots)
        max_len = [min(self.gamma, b) for b in r.budgets]
        copies = None
        copy = None
        if self.copy is not None:
            # the text so far repeats an n-gram of the context: copy what followed it (one-hot
            # drafts; whether a row copies depends on its committed text only, so it stays exact)
            copies = [self.copy.chain(r.indices[i], min(self.copy_len, r.budgets[i])) or None
                      for i in range(B)]

            def copy(i: int, drafted: list[int]) -> list[int]:
                # ... or as soon as the drafted tokens complete a repeated n-gram
                return self.copy.chain_after(r.indices[i], drafted,
                                             min(self.copy_len, r.budgets[i] - len(drafted)))

        d = draft_chains(r.drafter, r.roots, r.rows, r.sampler, self.policy, max_len, copies, copy)
        self._copy_rows = [bool(c) for c in copies] if copies is not None else [False] * B
        return d

    def observe(self, draft: Draft, verdict: Verdict) -> None:
        # a row that copied instead of drafting has nothing for the policy to learn from
        n = [0 if c else len(x) for c, x in zip(self._copy_rows, verdict.nodes, strict=True)]
        k = [0 if c else d for c, d in zip(self._copy_rows, draft.num_drafted, strict=True)]
        self.policy.update(torch.tensor(n), torch.tensor(k))


class Tree(Strategy):
    """"specinfer" (i.i.d. siblings, ``replacement=True``) and "rsd_c" (Gumbel-Top-k siblings): every
    node of level l gets ``branching[l]`` children."""

    def __init__(self, branching: tuple[int, ...], replacement: bool) -> None:
        self.branching = branching
        self.replacement = replacement
        self.name = "specinfer" if replacement else "rsd_c"

    def draft(self, r: Round) -> Draft:
        depth = [min(len(self.branching), b) for b in r.budgets]
        return draft_trees(r.drafter, r.roots, r.rows, r.sampler, branching=self.branching, depth=depth,
                           replacement=self.replacement)


class Beam(Strategy):
    """"rsd_s": Stochastic Beam Search trees, ``width`` expansions kept per level, ``depth`` levels."""

    name = "rsd_s"

    def __init__(self, width: int, depth: int) -> None:
        self.width = width
        self.depth = depth

    def draft(self, r: Round) -> Draft:
        depth = [min(self.depth, b) for b in r.budgets]
        return draft_trees(r.drafter, r.roots, r.rows, r.sampler, width=self.width, depth=depth)


class Lookup(Strategy):
    """Prompt lookup as the drafter: a copied chain per row for "sd", a trie of continuations for the
    tree methods (verified as deterministic drafts); a row without a match drafts nothing."""


    def __init__(self, lookup: PromptLookup, chain: bool, *, gamma: int = 10, depth: int = 0,
                 branching: tuple[int, ...] | None = None, width: int | None = None) -> None:
        self.lookup = lookup
        self.chain = chain
        self.gamma = gamma
        self.depth = depth
        self.branching = branching
        self.width = width
        self.name = "lookup"

    def draft(self, r: Round) -> Draft:
        dev = r.sampler.device
        B = len(r.roots)
        if self.chain:
            toks = [self.lookup.chain(r.indices[i], min(self.gamma, r.budgets[i])) if r.budgets[i] else []
                    for i in range(B)]
            return Draft(chain_trees(r.roots, toks, dev), None, True, [len(t) for t in toks],
                         [len(t) for t in toks])
        rows_t, rows_p, depth = [], [], []
        for i in range(B):
            d = min(self.depth, r.budgets[i])
            if d:
                t, p, lv = self.lookup.tree(r.indices[i], d, branching=self.branching, width=self.width)
            else:
                t, p, lv = [r.roots[i]], [-1], 0
            rows_t.append(t)
            rows_p.append(p)
            depth.append(lv if len(t) > 1 else 0)
        N = max(len(t) for t in rows_t)
        tokens = torch.tensor([t + [-1] * (N - len(t)) for t in rows_t], dtype=torch.long, device=dev)
        parents = torch.tensor([p + [-1] * (N - len(p)) for p in rows_p], dtype=torch.long, device=dev)
        num = torch.tensor([len(t) for t in rows_t], dtype=torch.long, device=dev)
        return Draft(Trees(tokens, parents, num), None, False, depth, [len(t) - 1 for t in rows_t])
