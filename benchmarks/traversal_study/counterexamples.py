"""Small explicit instances for FINDINGS.md: the negative controls and the SBS case where
Traversal Verification accepts fewer tokens than RRS. Run: python counterexamples.py"""
from enumerate_tree import Instance, all_trees, evaluate, pad_law, sbs_trees


def explicit(V, D, branching, L, p, q):
    inst = Instance(V, D, branching, L, 0)
    for pre in list(inst.p):
        inst.p[pre] = p(pre)
    for pre in list(inst.q):
        inst.q[pre] = q(pre)
    return inst


def first_marginals(inst, law_dict, k):
    """marginal law of the first k tokens of the padded law"""
    out = {}
    for s, pr in pad_law(inst, law_dict).items():
        out[s[:k]] = out.get(s[:k], 0.0) + pr
    return out


def show(title, inst, law, rules, k=None):
    trees = all_trees(inst, law)
    print(f"\n== {title}")
    target = pad_law(inst, {(): 1.0})
    for rule, var in rules:
        r = evaluate(inst, trees, law, rule, var)
        print(f"  {rule}/{var}: TVD {r['tvd']:.4f}  E[tokens] {r['etok']:.4f}")
        if k:
            m = first_marginals(inst, r["law"], k)
            t = {}
            for s, pr in target.items():
                t[s[:k]] = t.get(s[:k], 0.0) + pr
            keys = sorted(t)
            print("     law of first", k, "tokens:", {key: round(m.get(key, 0), 4) for key in keys})
            print("     target               :", {key: round(t[key], 4) for key in keys})


if __name__ == "__main__":
    # (a) without-replacement siblings verified as if i.i.d. (Q not conditioned): V=3, one level,
    #     2 children drawn without replacement. (TV = RRS at the root, so this is the depth-1 case
    #     of both rules.)
    P0, Q0 = [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]
    inst = explicit(3, 1, (2,), 2, lambda pre: P0 if pre == () else [1 / 3] * 3,
                    lambda pre: Q0)
    show("(a) V=3, D=1, b=(2,), without replacement, p=[.5,.3,.2], q=[.2,.2,.6]", inst, "wo",
         [("tv", "exact"), ("tv", "nocond")], k=1)

    # (b) unweighted residual max(0, P - Q) on a chain K=2 (tv = block verification)
    Pr, Qr = [0.4, 0.4, 0.2], [0.2, 0.3, 0.5]
    P1, Q1 = [0.6, 0.35, 0.05], [0.1, 0.1, 0.8]
    inst = explicit(3, 2, (1, 1), 3,
                    lambda pre: Pr if pre == () else (P1 if len(pre) == 1 else [1 / 3] * 3),
                    lambda pre: Qr if pre == () else Q1)
    show("(b) chain V=3 K=2, p_0=[.4,.4,.2] q_0=[.2,.3,.5], p_1=[.6,.35,.05] q_1=[.1,.1,.8] "
         "(all prefixes)", inst, "iid", [("block", "exact"), ("tv", "exact"), ("tv", "unweighted")],
         k=2)

    # (c) SBS (RSD-S) tree, V=3, D=2, W=2: TV exact but accepts fewer tokens than RRS
    inst = Instance(3, 2, (2, 2), 3, 1289)
    print("\n== (c) SBS W=2 instance where TV < RRS in E[tokens]")
    print(inst.describe())
    trees = sbs_trees(inst, 2)
    for rule in ("rrs", "tv"):
        r = evaluate(inst, trees, "sbs", rule)
        print(f"  {rule}: TVD {r['tvd']:.1e}  E[tokens] {r['etok']:.6f}")
