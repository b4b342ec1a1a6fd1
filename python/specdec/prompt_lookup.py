"""Prompt-lookup (n-gram) drafting: drafts copied from the context, no second model.

The last ``n`` committed tokens (n from ``max_ngram`` down to ``min_ngram``) are looked up among the
earlier text (the prompt and what was generated); the tokens that followed a match are the draft. A
chain takes the most recent match that has a continuation; a tree merges the continuations of up to
``max_matches`` matches into a trie, so that where the text repeated itself in different ways every
way is tried in the same target forward.

The drafts are deterministic, so they are verified exactly as one-hot drafts (``draft_probs=None``
in :func:`specdec_kernels.verify_chain` / :func:`~specdec_kernels.verify_tree`): a chain's token x is
accepted with probability p(x), a node's distinct children one after another against the residual.
The output keeps the target's law at any temperature and equals greedy decoding at temperature 0.

Beside a drafter model (``SpeculativeDecoder(target, drafter, method="sd", lookup=PromptLookup())``)
a round copies instead of drafting when the committed text ends in a repeated n-gram, and a drafted
chain ends with a copy as soon as its drafted tokens complete one (:meth:`PromptLookup.chain_after`).
The copied tail's draft law is a point mass (the copy is a function of the text before it), so the
chain is verified with the drafter's q rows followed by one-hot rows.

Lookups are O(1) per n: :class:`NgramIndex` keeps, for every n-gram of the context, the positions
that follow it, updated as tokens are committed (a few microseconds per token).
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramIndex:
    """The context and, for n in ``1..max_ngram``, every n-gram's following positions (ascending)."""

    def __init__(self, max_ngram: int) -> None:
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._after: list[dict[tuple[int, ...], list[int]]] = [{} for _ in range(max_ngram + 1)]

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.tokens.append(int(t))
            end = len(self.tokens)
            for n in range(1, min(self.max_ngram, end) + 1):
                self._after[n].setdefault(tuple(self.tokens[end - n : end]), []).append(end)

    def after(self, ngram: tuple[int, ...]) -> list[int]:
        """Positions right after every occurrence of ``ngram`` (ascending; may include the end)."""
        return self._after[len(ngram)].get(ngram, []) if len(ngram) <= self.max_ngram else []

    def matches(self, n: int) -> list[int]:
        """Positions right after the earlier occurrences of the last ``n`` tokens, most recent first
        (the suffix itself is not a match)."""
        if n > len(self.tokens) or n > self.max_ngram:
            return []
        pos = self._after[n].get(tuple(self.tokens[-n:]), [])
        return [p for p in reversed(pos) if p < len(self.tokens)]


class PromptLookup:
    """The prompt-lookup drafter: give it to :class:`specdec.SpeculativeDecoder` as ``drafter``.

    Args:
        max_ngram: the longest suffix looked up (longer matches predict better; tried first).
        min_ngram: the shortest suffix looked up (1 also drafts after a single repeated token).
        max_matches: how many matches a tree merges (chains use the most recent one).

    Example:
        >>> dec = SpeculativeDecoder(target, PromptLookup(), method="sd", gamma=10)  # doctest: +SKIP
        >>> dec = SpeculativeDecoder(target, drafter, method="sd", gamma=3,
        ...                          lookup=PromptLookup(min_ngram=2))  # beside a model  # doctest: +SKIP
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_matches: int = 8) -> None:
        for name, v in (("max_ngram", max_ngram), ("min_ngram", min_ngram), ("max_matches", max_matches)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if min_ngram > max_ngram:
            raise ValueError(f"min_ngram ({min_ngram}) must be <= max_ngram ({max_ngram})")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.max_matches = max_matches

    def __repr__(self) -> str:
        return (
            f"PromptLookup(max_ngram={self.max_ngram}, min_ngram={self.min_ngram}, "
            f"max_matches={self.max_matches})"
        )

    def index(self, context: Sequence[int] = ()) -> NgramIndex:
        idx = NgramIndex(self.max_ngram)
        idx.extend(context)
        return idx

    def chain(self, idx: NgramIndex, max_len: int) -> list[int]:
        """Up to ``max_len`` tokens that followed the longest, most recent match ([] when none)."""
        return self.chain_after(idx, (), max_len)

    def chain_after(self, idx: NgramIndex, drafted: Sequence[int], max_len: int) -> list[int]:
        """:meth:`chain` for the context followed by ``drafted`` (tokens not committed yet): the
        longest suffix reaching into ``drafted`` is looked up among the committed text only (its
        occurrence at the very end, when ``drafted`` is empty, is no match)."""
        if max_len <= 0:
            return []
        toks = idx.tokens
        d = list(drafted)
        for n in range(min(self.max_ngram, len(toks) + len(d) - 1), self.min_ngram - 1, -1):
            tail = tuple((toks[-(n - len(d)) :] if n > len(d) else []) + d[-n:])
            for p in reversed(idx.after(tail)):
                if p < len(toks):
                    return toks[p : p + max_len]
        return []

    def tree(
        self, idx: NgramIndex, depth: int, *, branching: Sequence[int] | None = None, width: int | None = None
    ) -> tuple[list[int], list[int], int]:
        """A trie of continuations: (tokens, parents, levels) in the tree format of specdec_kernels
        with node 0 the root (the last committed token, ``tokens[0] = idx.tokens[-1]``).

        Continuations of the longest matching n-grams come first, then shorter ones, most recent
        first; at most ``branching[l]`` children per node at level l, or ``width`` nodes per level.
        """
        toks = idx.tokens
        conts: list[list[int]] = []
        seen: set[int] = set()
        for n in range(min(self.max_ngram, len(toks) - 1), self.min_ngram - 1, -1):
            for p in idx.matches(n):
                if p not in seen and p < len(toks):
                    seen.add(p)
                    conts.append(toks[p : p + depth])
                    if len(conts) == self.max_matches:
                        break
            if len(conts) == self.max_matches:
                break
        tokens, parents = [toks[-1]], [-1]
        children: list[dict[int, int]] = [{}]
        level_of = [0]
        per_level = [0] * (depth + 1)
        for c in conts:
            node = 0
            for level, t in enumerate(c):
                nxt = children[node].get(t)
                if nxt is None:
                    limit_ok = (
                        len(children[node]) < branching[level]
                        if branching is not None
                        else per_level[level + 1] < width
                    )
                    if not limit_ok:
                        break
                    nxt = len(tokens)
                    tokens.append(t)
                    parents.append(node)
                    children[node][t] = nxt
                    children.append({})
                    level_of.append(level + 1)
                    per_level[level + 1] += 1
                node = nxt
        # the kernels' tree format wants parents before children and levels in order: sort by level
        # (stable, so a node's order among its siblings, best continuation first, is kept)
        order = sorted(range(len(tokens)), key=lambda i: level_of[i])
        where = {old: new for new, old in enumerate(order)}
        tokens = [tokens[i] for i in order]
        parents = [-1 if parents[i] < 0 else where[parents[i]] for i in order]
        return tokens, parents, max(level_of)
