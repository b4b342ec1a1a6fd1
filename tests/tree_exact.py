"""Exact laws of tree verification rules by enumeration (float64), for tests/test_tree_block.py.

An instance is a pair of context-dependent tables p[prefix], q[prefix] over V tokens (prefix = the
tokens after the round's root). For a fixed branching (b_1, ..., b_D), every drafted tree is
enumerated with its probability under a drafting law:
    "iid"  children of a node i.i.d. from q[prefix] (SpecInfer),
    "wo"   sequentially without replacement (the law of Gumbel-Top-k: RSD-C),
    "det"  the top-b tokens of q[prefix] (deterministic drafts, q one-hot per child).
A rule gives, for each tree, the exact law of the emitted tokens of one round; the round's output
padded with the target's continuation to length D + 1 must have the target's law.

Rules (vector forms, straight from docs/algorithms.md §4 and §9):
    "rrs"                recursive rejection sampling (verify_tree rule "token")
    "tv"                 Traversal Verification (verify_tree rule "block")
    "tv_unweighted"      negative control: the residual after a deletion is max(0, P - Q), not
                         max(0, w P - Q)
    "tv_iid_on_wo"       negative control: later siblings tested against q instead of q
                         conditioned on the earlier siblings (the i.i.d. rule on "wo" trees)
A tree node is a tuple of (token, child node) pairs in draw order; a leaf is ().
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

RULES = ("rrs", "tv", "tv_unweighted", "tv_iid_on_wo")


def _norm(v):
    s = sum(v)
    return [x / s for x in v]


class Instance:
    """Random tables: p ~ Dirichlet(1) (sometimes with a zero), q = lam p + (1 - lam) Dirichlet(1)."""

    def __init__(self, V: int, branching: tuple[int, ...], seed: int):
        rng = random.Random(seed)
        self.V, self.branching, self.D = V, tuple(branching), len(branching)

        def dirichlet():
            return _norm([rng.gammavariate(1.0, 1.0) for _ in range(V)])

        self.p, self.q = {}, {}
        for n in range(self.D + 1):
            for pre in itertools.product(range(V), repeat=n):
                p = dirichlet()
                if rng.random() < 0.15:
                    p[rng.randrange(V)] = 0.0
                    p = _norm(p)
                self.p[pre] = p
                if n < self.D:
                    lam = rng.uniform(0.0, 0.9)
                    noise = dirichlet()
                    self.q[pre] = _norm([lam * a + (1 - lam) * b for a, b in zip(p, noise, strict=True)])

    def trees(self, law: str):
        """[(tree, probability)] of every drafted tree under ``law``."""
        def children(pre):
            q, b, V = self.q[pre], self.branching[len(pre)], self.V
            support = [x for x in range(V) if q[x] > 0]
            if law == "det":
                yield tuple(sorted(support, key=lambda x: (-q[x], x))[:b]), 1.0
            elif law == "iid":
                for toks in itertools.product(support, repeat=b):
                    pr = 1.0
                    for t in toks:
                        pr *= q[t]
                    yield toks, pr
            else:  # "wo": sequential sampling without replacement
                def rec(chosen, pr):
                    left = [x for x in support if x not in chosen]
                    if len(chosen) == b or not left:
                        yield tuple(chosen), pr
                        return
                    mass = sum(q[x] for x in left)
                    for x in left:
                        yield from rec(chosen + [x], pr * q[x] / mass)
                yield from rec([], 1.0)

        def sub(pre):
            if len(pre) == self.D:
                return [((), 1.0)]
            out = []
            for toks, pr in children(pre):
                for combo in itertools.product(*[sub(pre + (t,)) for t in toks]):
                    p = pr
                    for c in combo:
                        p *= c[1]
                    out.append((tuple((t, c[0]) for t, c in zip(toks, combo, strict=True)), p))
            return out

        return sub(())

    def target_law(self):
        return self.pad({(): 1.0})

    def pad(self, emitted):
        """Each emitted sequence continued with the target's law to length D + 1."""
        out = defaultdict(float)

        def ext(seq, pr):
            if len(seq) == self.D + 1:
                out[seq] += pr
                return
            for y, py in enumerate(self.p[seq]):
                if py > 0:
                    ext(seq + (y,), pr * py)

        for seq, pr in emitted.items():
            if pr:
                ext(seq, pr)
        return out


def _draft_law(q, tok, earlier, law, rule, V):
    """The law child ``tok`` was drawn from, as the rule assumes it."""
    if law == "det":
        return [1.0 if x == tok else 0.0 for x in range(V)]
    if law == "iid" or rule == "tv_iid_on_wo":
        return list(q)
    left = [0.0 if x in earlier else q[x] for x in range(V)]
    s = sum(left)
    return [x / s for x in left] if s > 0 else left


def round_law(inst: Instance, tree, law: str, rule: str, weight: float, out: dict) -> None:
    """Add weight x the law of one round's emitted tokens under ``rule`` for one drafted tree."""
    V = inst.V

    def rrs(node, pre, prob):
        P = list(inst.p[pre])
        earlier = []
        for tok, child in node:
            Q = _draft_law(inst.q[pre], tok, earlier, law, rule, V)
            a = min(1.0, P[tok] / Q[tok]) if Q[tok] > 0 else 1.0
            rrs(child, pre + (tok,), prob * a)
            prob *= 1.0 - a
            res = [max(0.0, P[x] - Q[x]) for x in range(V)]
            if sum(res) > 0:
                P = _norm(res)
            earlier.append(tok)
        for y in range(V):
            out[pre + (y,)] += prob * P[y]

    def tv(node, pre, w, cont):
        """cont: mass of reaching this node's subtree; returns the mass with which it is deleted."""
        P = list(inst.p[pre])
        earlier = []
        for tok, child in node:
            Q = _draft_law(inst.q[pre], tok, earlier, law, rule, V)
            w_c = min(1.0, w * P[tok] / Q[tok]) if Q[tok] > 0 else 1.0
            cont = tv(child, pre + (tok,), w_c, cont)
            m = sum(max(0.0, w * P[x] - Q[x]) for x in range(V))
            res = [max(0.0, (1.0 if rule == "tv_unweighted" else w) * P[x] - Q[x]) for x in range(V)]
            den = m + 1.0 - w
            w = m / den if den > 0 and sum(res) > 0 else 0.0
            if sum(res) > 0:
                P = _norm(res)
            earlier.append(tok)
        if not pre:
            w = 1.0  # the root (the committed token) is always accepted
        for y in range(V):
            out[pre + (y,)] += cont * w * P[y]
        return cont * (1.0 - w)

    if rule == "rrs":
        rrs(tree, (), weight)
    else:
        tv(tree, (), 1.0, weight)


def evaluate(inst: Instance, law: str, rule: str) -> tuple[float, float]:
    """(total-variation distance to the target's law, expected tokens per round)."""
    emitted = defaultdict(float)
    for tree, pr in inst.trees(law):
        round_law(inst, tree, law, rule, pr, emitted)
    target = inst.target_law()
    got = inst.pad(emitted)
    keys = set(got) | set(target)
    tvd = 0.5 * sum(abs(got.get(k, 0.0) - target.get(k, 0.0)) for k in keys)
    return tvd, sum(pr * len(s) for s, pr in emitted.items())
