"""Exact enumeration harness for tree verification rules of speculative decoding.

Everything is float64 and exact up to rounding: no sampling anywhere.

Instance: vocabulary V, tree depth D, branching vector b = (b_0, ..., b_{D-1}), output length L.
Context-dependent target p[prefix] (every prefix of length < L) and draft q[prefix] (length < D)
are explicit tables (dicts keyed by the token tuple after the last committed token).

Drafting laws (the children of a node are drawn from q[node's prefix], in draw order):
  'iid' : b_d children i.i.d. from q (with replacement; duplicates possible)      (SpecInfer)
  'wo'  : b_d children sequentially without replacement from q (= Gumbel-Top-k law) (RSD-C)
  'det' : deterministic drafts (draft_probs=None): top-b_d tokens of q, one-hot Q_k = e_{x_k}
  'sbs' : Stochastic Beam Search tree of width W (RSD-S), enumerated exactly through the
          Plackett-Luce order of the full depth-D sequences (see sbs_trees()).
Every tree is enumerated with its probability. Every verification rule is integrated
analytically: each rule walks the tree once and carries the probability mass of every branch of
its own random choices, adding the mass of each emitted sequence (accepted tokens + the final
corrected / bonus token) to a law. The emitted law is then padded to length L with the target's
own continuation (i.e. sampling from p after the round) and compared with the target's law of
length-L sequences by total-variation distance (TVD).

Also reported: E[tokens emitted per round] (accepted + 1) and E[full rows read] (the number of
distinct tree nodes whose full vocabulary row pair p/q a kernel has to pass over: a node at which
at least one child was rejected/deleted (to get the residual's mass), plus the row of the final
token if not already counted).

Rules (see FINDINGS.md for the pseudocode):
  rrs            recursive rejection sampling (docs/algorithms.md section 4), d_k = q conditioned on
                 the earlier siblings for 'wo'/'sbs' trees, d_k = q for 'iid' trees
  tv             Traversal Verification (Weng et al. 2025, reconstructed): post-order (leaf-to-root)
                 traversal with sequence-level weights; residual [w P - Q_k]_+, weight update
                 w <- m / (m + 1 - w); Q_k = the law child k was drawn from
  tv_closed      the same rule in the closed form a kernel would use (scalars C, R, Q_S, w per node;
                 residual max(0, p - C q) never stored) - must give the same law as tv to 1e-15
  block          docs section 9 block verification, straight from its pseudocode (chains only)
Negative controls (must show a clearly nonzero TVD):
  tv_unweighted  tv with the residual max(0, P - Q) instead of max(0, w P - Q)
  tv_nocond      tv on 'wo' trees with Q not conditioned on the rejected siblings (treats them iid)
  tv_pubimpl     tv with the parent-weight update min(1, m / (1 - Q(x))) (a variant seen in a public
                 third-party implementation) instead of m / (m + 1 - w)
  rrs_nocond     rrs on 'wo' trees with d_k = q (no conditioning)
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from collections import defaultdict

# --------------------------------------------------------------------------------------------
# instances


def _dirichlet(rng: random.Random, V: int, alpha: float) -> list[float]:
    g = [rng.gammavariate(alpha, 1.0) for _ in range(V)]
    s = sum(g)
    return [x / s for x in g]


def _norm(v: list[float]) -> list[float]:
    s = sum(v)
    return [x / s for x in v]


class Instance:
    """Random context-dependent p and q tables.

    q[prefix] = lam * p[prefix] + (1 - lam) * Dirichlet, lam ~ U(0, mix_max) per prefix, so
    acceptance rates range from low to high. With probability `zero` per row one entry of p (and
    independently one of q) is set to 0, to exercise the support edge cases.
    """

    def __init__(self, V: int, D: int, branching: tuple[int, ...], L: int, seed: int,
                 alpha: float = 1.0, mix_max: float = 0.9, zero: float = 0.15):
        assert len(branching) == D and L >= D + 1
        rng = random.Random(seed)
        self.V, self.D, self.branching, self.L, self.seed = V, D, tuple(branching), L, seed
        self.p: dict[tuple, list[float]] = {}
        self.q: dict[tuple, list[float]] = {}
        for n in range(L):
            for pre in itertools.product(range(V), repeat=n):
                p = _dirichlet(rng, V, alpha)
                if rng.random() < zero:
                    p[rng.randrange(V)] = 0.0
                    p = _norm(p)
                self.p[pre] = p
                if n < D:
                    lam = rng.uniform(0.0, mix_max)
                    noise = _dirichlet(rng, V, alpha)
                    q = [lam * a + (1 - lam) * b for a, b in zip(p, noise, strict=True)]
                    if rng.random() < zero:
                        q[rng.randrange(V)] = 0.0
                    self.q[pre] = _norm(q)

    def describe(self) -> str:
        lines = [f"V={self.V} D={self.D} b={self.branching} L={self.L} seed={self.seed}"]
        for pre in sorted(self.p, key=lambda t: (len(t), t)):
            s = f"  p{list(pre)} = [{', '.join(f'{x:.6f}' for x in self.p[pre])}]"
            if pre in self.q:
                s += f"   q{list(pre)} = [{', '.join(f'{x:.6f}' for x in self.q[pre])}]"
            lines.append(s)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# drafting laws: enumerate every tree with its probability
#
# A node is a tuple of (token, child_node) pairs in draw order; a leaf is ().


def child_token_seqs(q: list[float], b: int, law: str):
    """All ordered child-token tuples of one node with their probabilities."""
    V = len(q)
    support = [x for x in range(V) if q[x] > 0.0]
    if law == "iid":
        for toks in itertools.product(support, repeat=b):
            pr = 1.0
            for t in toks:
                pr *= q[t]
            yield toks, pr
    elif law == "wo":
        # sequential sampling without replacement (the law of Gumbel-Top-k); fewer than b
        # children when q has fewer than b tokens of positive mass (gumbel_topk gives -1 slots)
        def rec(chosen, pr):
            left = [x for x in support if x not in chosen]
            if len(chosen) == b or not left:
                yield tuple(chosen), pr
                return
            mass = sum(q[x] for x in left)
            for x in left:
                yield from rec(chosen + [x], pr * q[x] / mass)
        yield from rec([], 1.0)
    else:
        raise ValueError(law)


def det_tree(inst: Instance) -> list[tuple[tuple, float]]:
    """Deterministic drafts (draft_probs=None): every node's children are the top-b_d tokens of
    q[prefix] (ties to the smaller id); one tree with probability 1. The rules then use the
    one-hot law Q_k = e_{x_k} for child k."""
    def node(prefix):
        d = len(prefix)
        if d == inst.D:
            return ()
        q = inst.q[prefix]
        toks = sorted((x for x in range(inst.V) if q[x] > 0), key=lambda x: (-q[x], x))
        return tuple((t, node(prefix + (t,))) for t in toks[:inst.branching[d]])
    return [(node(()), 1.0)]


def all_trees(inst: Instance, law: str) -> list[tuple[tuple, float]]:
    if law == "det":
        return det_tree(inst)
    memo: dict[tuple, list] = {}

    def sub(prefix):
        if prefix in memo:
            return memo[prefix]
        d = len(prefix)
        if d == inst.D:
            res = [((), 1.0)]
        else:
            res = []
            for toks, pr in child_token_seqs(inst.q[prefix], inst.branching[d], law):
                lists = [sub(prefix + (t,)) for t in toks]
                for combo in itertools.product(*lists):
                    p = pr
                    for c in combo:
                        p *= c[1]
                    res.append((tuple((t, c[0]) for t, c in zip(toks, combo, strict=True)), p))
        memo[prefix] = res
        return res

    return sub(())


def sbs_trees(inst: Instance, W: int, lump: bool = True) -> list[tuple[tuple, float]]:
    """Exact law of the Stochastic Beam Search tree (docs section 3) of width W and depth D.

    SBS keeps, at every level t, the W prefixes of largest G_t, where G_t(y) = max of the
    Gumbel-perturbed log q over all depth-D completions of y (Kool et al. 2019: top-down SBS has
    exactly this law). So level t's kept set is the first W distinct length-t prefixes in the
    Plackett-Luce order (sampling without replacement with weights q(seq)) of the depth-D
    sequences, and a node's kept children, ordered by G descending, are ordered by first
    appearance. We enumerate that order draw by draw until every level is determined.
    (inst.branching is ignored.)
    """
    V, D = inst.V, inst.D
    seqs = {}
    for s in itertools.product(range(V), repeat=D):
        pr = 1.0
        for i in range(D):
            pr *= inst.q[s[:i]][s[i]]
        if pr > 0:
            seqs[s] = pr
    need = []
    for t in range(1, D + 1):
        n_t = len({s[:t] for s in seqs})
        need.append(min(W, n_t))
    out: dict[tuple, float] = defaultdict(float)

    def build(order):
        kept = []
        for t in range(1, D + 1):
            seen = []
            for s in order:
                if s[:t] not in seen:
                    seen.append(s[:t])
                if len(seen) == need[t - 1]:
                    break
            kept.append(seen)

        def node(prefix):
            t = len(prefix)
            if t == D:
                return ()
            return tuple((y[-1], node(y)) for y in kept[t] if y[:-1] == prefix)
        return node(())

    def done(order):
        for t in range(1, D + 1):
            if len({s[:t] for s in order}) < need[t - 1]:
                return False
        return True

    def rec(order, pr, remaining):
        if done(order):
            out[build(order)] += pr
            return
        mass = sum(seqs[s] for s in remaining)
        for s in remaining:
            rec(order + [s], pr * seqs[s] / mass, [r for r in remaining if r != s])

    def relevant(order, s):
        # s adds a new prefix at some level that is not yet complete
        for t in range(1, D + 1):
            seen = {x[:t] for x in order}
            if len(seen) < need[t - 1] and s[:t] not in seen:
                return True
        return False

    def rec_lumped(order, pr):
        # Draws that add nothing at an unfinished level change nothing; by the restriction
        # property of Plackett-Luce, the next relevant draw is s with prob q(s) / q(relevant set).
        if done(order):
            out[build(order)] += pr
            return
        A = [s for s in seqs if s not in order and relevant(order, s)]
        mass = sum(seqs[s] for s in A)
        for s in A:
            rec_lumped(order + [s], pr * seqs[s] / mass)

    if lump:
        rec_lumped([], 1.0)
    else:
        rec([], 1.0, list(seqs))
    return list(out.items())


# --------------------------------------------------------------------------------------------
# verification rules. Each adds, for one tree of probability `weight`, the mass of every emitted
# sequence to acc.law and the expected number of full rows read to acc.rows.


class Acc:
    def __init__(self):
        self.law: dict[tuple, float] = defaultdict(float)
        self.rows = 0.0     # distinct node rows (p/q pair) touched by a full pass over V
        self.passes = 0.0   # full mass passes over V (one per rejection/deletion whose residual
        #                     mass is needed), not counting the one race pass of the final token


def _cond(Q: list[float], tok: int) -> list[float]:
    """Q conditioned on not drawing tok (the law of the next sibling without replacement)."""
    Q = list(Q)
    Q[tok] = 0.0
    s = sum(Q)
    return [x / s for x in Q] if s > 0 else Q


def rrs(inst, tree, law, acc, weight, variant="exact"):
    V = inst.V
    cond = law in ("wo", "sbs") and variant != "nocond"

    def proc(node, prefix, prob):
        if not node:  # leaf: bonus from p
            for y, py in enumerate(inst.p[prefix]):
                acc.law[prefix + (y,)] += prob * py
            acc.rows += prob
            return
        r = inst.p[prefix]
        Q = inst.q[prefix]
        first = True
        for k, (tok, child) in enumerate(node):
            if law == "det":
                Q = [1.0 if x == tok else 0.0 for x in range(V)]
            qx = Q[tok]
            a = min(1.0, r[tok] / qx) if qx > 0 else 0.0
            proc(child, prefix + (tok,), prob * a)
            prob *= 1.0 - a
            if first:
                acc.rows += prob
                first = False
            if k + 1 < len(node):
                acc.passes += prob
            res = [max(0.0, r[x] - Q[x]) for x in range(V)]
            s = sum(res)
            if s > 0:
                r = [x / s for x in res]
            if cond:
                Q = _cond(Q, tok)
        for y in range(V):
            acc.law[prefix + (y,)] += prob * r[y]

    proc(tree, (), weight)


def tv(inst, tree, law, acc, weight, variant="exact"):
    """Traversal Verification, explicit-vector form (post-order = leaf-to-root traversal).

    proc(node, w, cont): node's current weight (p_alpha) is w; cont is the probability mass of
    the branch in which every test so far was a rejection. Children subtrees are processed in
    draw order (each completely, leaves first), then the node itself is tested as a leaf.
    Returns the mass with which the node ends up deleted.
    """
    V = inst.V
    cond = law in ("wo", "sbs") and variant != "nocond"

    def proc(node, prefix, w, cont):
        P = inst.p[prefix]
        read = False
        if node:
            Q = inst.q[prefix]
        for k, (tok, child) in enumerate(node):
            if law == "det":
                Q = [1.0 if x == tok else 0.0 for x in range(V)]
            qx = Q[tok]
            wc = min(1.0, w * P[tok] / qx) if qx > 0 else 0.0
            cont = proc(child, prefix + (tok,), wc, cont)   # the child's subtree was deleted
            if not read:
                acc.rows += cont
                read = True
            if prefix or k + 1 < len(node):  # the root's weight stays 1: mass only for a sibling
                acc.passes += cont
            res = [max(0.0, w * P[x] - Q[x]) for x in range(V)]
            m = sum(res)
            if variant == "unweighted":                      # negative control
                res = [max(0.0, P[x] - Q[x]) for x in range(V)]
            s = sum(res)
            if variant == "pubimpl":                         # negative control
                w_new = min(1.0, m / (1.0 - qx)) if qx < 1.0 else 0.0
            else:
                den = m + 1.0 - w
                w_new = m / den if den > 0 else 0.0
            if s > 0:
                P = [x / s for x in res]
            else:
                w_new = 0.0
            w = w_new
            if cond:
                Q = _cond(Q, tok)
        acc_mass = cont * w
        if acc_mass:
            for y in range(V):
                acc.law[prefix + (y,)] += acc_mass * P[y]
        if not read:
            acc.rows += acc_mass
        return cont * (1.0 - w)

    proc(tree, (), 1.0, weight)  # the root ends deleted with mass 0 (up to rounding) for 'exact'


def tv_closed(inst, tree, law, acc, weight, variant="exact"):
    """Traversal Verification in closed form: per node only the scalars
        w   current weight (p_alpha)
        C   residual scale: unnormalised target at the node  r(x) = max(0, p(x) - C q(x)), 0 on S
        R   its mass sum_x r(x)
        QS  q-mass of the rejected siblings S (without replacement; 0 and S empty with replacement)
    child test:   accept-weight  w_c = min(1, w * r(x) * (1 - QS) / (R * q(x)))
    on deletion:  R' = sum max(0, p - C' q) over x not in S' (one pass over the row),
                  C' = C + R / (w (1 - QS)),   m = w R' / R,   w' = m / (m + 1 - w)
    """
    V = inst.V
    cond = law in ("wo", "sbs")

    def proc(node, prefix, w, cont):
        p = inst.p[prefix]
        C, R, QS = 0.0, 1.0, 0.0
        S = set()
        if node:
            q = inst.q[prefix]
        read = False
        for k, (tok, child) in enumerate(node):
            if tok in S or q[tok] <= 0:
                wc = 0.0
            else:
                rx = max(0.0, p[tok] - C * q[tok])
                wc = min(1.0, w * rx * (1.0 - QS) / (R * q[tok])) if R > 0 else 0.0
            cont = proc(child, prefix + (tok,), wc, cont)
            if not read:
                acc.rows += cont
                read = True
            if prefix or k + 1 < len(node):
                acc.passes += cont
            if w <= 0 or R <= 0:
                w = 0.0
                continue
            C = C + R / (w * (1.0 - QS))
            if cond:
                S.add(tok)
                QS += q[tok]
            R_new = sum(max(0.0, p[x] - C * q[x]) for x in range(V) if x not in S)
            m = w * R_new / R
            den = m + 1.0 - w
            w = m / den if den > 0 else 0.0
            R = R_new
        acc_mass = cont * w
        if acc_mass:
            r = [0.0 if x in S else max(0.0, p[x] - C * q[x]) if node else p[x] for x in range(V)]
            s = sum(r)
            for y in range(V):
                acc.law[prefix + (y,)] += acc_mass * r[y] / s
        if not read:
            acc.rows += acc_mass
        return cont * (1.0 - w)

    proc(tree, (), 1.0, weight)


def block_chain(inst, tree, law, acc, weight, variant="exact"):
    """docs/algorithms.md section 9, straight from its pseudocode (tree must be a chain)."""
    V = inst.V
    xs = []
    node = tree
    while node:
        assert len(node) == 1
        tok, node = node[0]
        xs.append(tok)
    K = len(xs)
    w = [1.0]
    h = [None]
    for i in range(1, K + 1):
        pre = tuple(xs[:i - 1])
        qx = inst.q[pre][xs[i - 1]]
        w.append(min(1.0, w[i - 1] * inst.p[pre][xs[i - 1]] / qx))
        if i < K:
            pi, qi = inst.p[tuple(xs[:i])], inst.q[tuple(xs[:i])]
            m = sum(max(0.0, w[i] * a - b) for a, b in zip(pi, qi, strict=True))
            den = m + 1.0 - w[i]
            h.append(m / den if den > 0 else 1.0)
        else:
            h.append(w[K])
    for tau in range(K, -1, -1):
        pr = 1.0 if tau == 0 else h[tau]
        for j in range(tau + 1, K + 1):
            pr *= 1.0 - h[j]
        pr *= weight
        if pr == 0:
            continue
        pre = tuple(xs[:tau])
        if tau == K:
            dist = inst.p[pre]
        else:
            res = [max(0.0, w[tau] * a - b) for a, b in zip(inst.p[pre], inst.q[pre], strict=True)]
            dist = _norm(res)
        for y in range(V):
            acc.law[pre + (y,)] += pr * dist[y]
        acc.rows += pr * (K - tau if tau < K else 1)  # rows read scanning down from K
        acc.passes += pr * (K - max(tau, 1) if tau < K else 0)  # m_i for i = K-1 .. max(tau, 1)


RULES = {"rrs": rrs, "tv": tv, "tv_closed": tv_closed, "block": block_chain}


# --------------------------------------------------------------------------------------------
# laws


def pad_law(inst: Instance, emitted: dict) -> dict:
    """Extend each emitted sequence to length L with the target's continuation."""
    L = inst.L
    out: dict[tuple, float] = defaultdict(float)

    def ext(seq, pr):
        if len(seq) == L:
            out[seq] += pr
            return
        for y, py in enumerate(inst.p[seq]):
            if py > 0:
                ext(seq + (y,), pr * py)

    for seq, pr in emitted.items():
        assert len(seq) <= L
        if pr != 0:
            ext(seq, pr)
    return out


def tvd(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in keys)


def evaluate(inst: Instance, trees, law: str, rule: str, variant: str = "exact"):
    acc = Acc()
    fn = RULES[rule]
    for tree, pr in trees:
        fn(inst, tree, law, acc, pr, variant)
    mass = sum(acc.law.values())
    etok = sum(pr * len(s) for s, pr in acc.law.items())
    target = pad_law(inst, {(): 1.0})
    d = tvd(pad_law(inst, acc.law), target)
    return {"tvd": d, "mass": mass, "etok": etok, "rows": acc.rows, "passes": acc.passes,
            "law": acc.law}


# --------------------------------------------------------------------------------------------
# experiments


def run_config(V, D, branching, law, seeds, rules, W=None, L=None, verbose=False, **inst_kw):
    L = L or D + 1
    rows = []
    for seed in seeds:
        inst = Instance(V, D, branching, L, seed, **inst_kw)
        trees = sbs_trees(inst, W) if law == "sbs" else all_trees(inst, law)
        tmass = sum(pr for _, pr in trees)
        assert abs(tmass - 1.0) < 1e-12, tmass
        res = {"seed": seed, "ntrees": len(trees)}
        for rule, variant in rules:
            r = evaluate(inst, trees, law, rule, variant)
            res[(rule, variant)] = r
        rows.append(res)
        if verbose:
            print(seed, len(trees), {f"{k[0]}/{k[1]}": (f"{v['tvd']:.2e}", round(v['etok'], 4))
                                     for k, v in res.items() if isinstance(k, tuple)},
                  flush=True)
    return rows


def summarize(name, rows, rules, base=("rrs", "exact"), out=sys.stdout):
    print(f"\n### {name}  ({len(rows)} seeds, {rows[0]['ntrees']} trees for seed {rows[0]['seed']})",
          file=out)
    print("| rule | max TVD | mean E[tokens] | mean E[distinct rows] | mean E[mass passes] | "
          "mean gain vs RRS | min gain | seeds with gain < -1e-12 |", file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    for key in rules:
        tv_ = max(r[key]["tvd"] for r in rows)
        et = sum(r[key]["etok"] for r in rows) / len(rows)
        rd = sum(r[key]["rows"] for r in rows) / len(rows)
        ps = sum(r[key]["passes"] for r in rows) / len(rows)
        if base in rows[0]:
            gains = [r[key]["etok"] - r[base]["etok"] for r in rows]
            g = f"{sum(gains) / len(gains):+.4f}"
            gm = f"{min(gains):+.4f}"
            neg = sum(1 for x in gains if x < -1e-12)
        else:
            g = gm = "-"
            neg = "-"
        print(f"| {key[0]}/{key[1]} | {tv_:.2e} | {et:.4f} | {rd:.3f} | {ps:.3f} | {g} | {gm} | {neg} |",
              file=out)


if __name__ == "__main__":
    t0 = time.time()
    which = sys.argv[1:] or ["all"]
    print(f"# enumerate_tree.py results ({' '.join(which)})")
    SEEDS = list(range(20))

    def want(k):
        return "all" in which or k in which

    if want("chain"):
        # chain sanity: branching 1, V=3, K=3, 4 emitted tokens; block (section 9) = tv on a chain
        rules = [("rrs", "exact"), ("block", "exact"), ("tv", "exact"), ("tv_closed", "exact"),
                 ("tv", "unweighted")]
        rows = run_config(3, 3, (1, 1, 1), "iid", SEEDS, rules, L=4)
        summarize("chain V=3 K=3 L=4 (rrs = section 1 token-level)", rows, rules)
        dmax = 0.0
        for r in rows:
            a, b = r[("block", "exact")]["law"], r[("tv", "exact")]["law"]
            dmax = max(dmax, max(abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b)))
        print(f"\nmax |law(block) - law(tv)| over emitted sequences, all seeds: {dmax:.2e}")
    if want("d2"):
        for V in (3, 4):
            for law in ("iid", "wo"):
                rules = [("rrs", "exact"), ("tv", "exact"), ("tv_closed", "exact"),
                         ("tv", "unweighted"), ("tv", "pubimpl")]
                if law == "wo":
                    rules += [("tv", "nocond"), ("rrs", "nocond")]
                rows = run_config(V, 2, (2, 2), law, SEEDS, rules)
                summarize(f"V={V} D=2 b=(2,2) L=3 law={law}", rows, rules)
    if want("d3"):
        for law in ("iid", "wo"):
            rules = [("rrs", "exact"), ("tv", "exact"), ("tv_closed", "exact"),
                     ("tv", "unweighted")]
            if law == "wo":
                rules += [("tv", "nocond")]
            rows = run_config(3, 3, (2, 2, 1), law, SEEDS, rules)
            summarize(f"V=3 D=3 b=(2,2,1) L=4 law={law}", rows, rules)
    if want("d3narrow"):
        for br in ((2, 1, 1), (3, 1, 1)):
            for law in ("iid", "wo"):
                rules = [("rrs", "exact"), ("tv", "exact"), ("tv_closed", "exact"),
                         ("tv", "unweighted")]
                rows = run_config(3, 3, br, law, SEEDS, rules)
                summarize(f"V=3 D=3 b={br} L=4 law={law}", rows, rules)
    if want("det"):
        # deterministic (one-hot) drafts: the tree is fixed, the law test is still exact
        for br in ((2, 2), (3, 1)):
            rules = [("rrs", "exact"), ("tv", "exact"), ("tv", "unweighted")]
            rows = run_config(3, 2, br, "det", SEEDS, rules)
            summarize(f"deterministic drafts V=3 D=2 b={br} L=3", rows, rules)
        rules = [("rrs", "exact"), ("tv", "exact"), ("tv", "unweighted")]
        rows = run_config(4, 3, (2, 2, 2), "det", SEEDS, rules)
        summarize("deterministic drafts V=4 D=3 b=(2,2,2) L=4", rows, rules)
    if want("d3full"):
        rules = [("rrs", "exact"), ("tv", "exact")]
        rows = run_config(3, 3, (2, 2, 2), "wo", list(range(3)), rules, verbose=True)
        summarize("V=3 D=3 b=(2,2,2) L=4 law=wo", rows, rules)
    if want("sbs"):
        for V, W in ((3, 2), (3, 3), (4, 2)):
            rules = [("rrs", "exact"), ("tv", "exact"), ("rrs", "nocond")]
            rows = run_config(V, 2, (2, 2), "sbs", SEEDS, rules, W=W)
            summarize(f"SBS (RSD-S) V={V} D=2 W={W} L=3", rows, rules)
    if want("sbs3"):
        for V, W in ((3, 2), (3, 3), (4, 2)):
            rules = [("rrs", "exact"), ("tv", "exact"), ("rrs", "nocond")]
            rows = run_config(V, 3, (2, 2, 2), "sbs", SEEDS if W == 2 else SEEDS[:5], rules, W=W)
            summarize(f"SBS (RSD-S) V={V} D=3 W={W} L=4", rows, rules)
    print(f"\n(elapsed {time.time() - t0:.1f} s)")
