"""Scan many random instances for E[tokens](TV) - E[tokens](RRS) < 0 (does TV dominate RRS?)."""
import sys

from enumerate_tree import Instance, all_trees, evaluate, sbs_trees


def scan(V, D, br, law, seeds, W=None, **kw):
    worst = (1e9, None)
    neg = 0
    gains = []
    maxtvd = 0.0
    for s in seeds:
        inst = Instance(V, D, br, D + 1, s, **kw)
        trees = sbs_trees(inst, W) if law == "sbs" else all_trees(inst, law)
        a = evaluate(inst, trees, law, "rrs")
        b = evaluate(inst, trees, law, "tv")
        maxtvd = max(maxtvd, a["tvd"], b["tvd"])
        g = b["etok"] - a["etok"]
        gains.append(g)
        if g < -1e-12:
            neg += 1
        if g < worst[0]:
            worst = (g, s)
    print(f"V={V} D={D} b={br} law={law} W={W} kw={kw}: {len(seeds)} seeds, max TVD {maxtvd:.1e}, "
          f"mean gain {sum(gains)/len(gains):+.4f}, #TV<RRS {neg}, worst {worst[0]:+.5f} (seed {worst[1]})",
          flush=True)

if __name__ == "__main__":
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    seeds = range(1000, 1000 + N)
    for kw in ({}, {"alpha": 0.3}, {"alpha": 0.3, "mix_max": 0.5}):
        scan(3, 2, (2, 2), "iid", seeds, **kw)
        scan(3, 2, (2, 2), "wo", seeds, **kw)
        scan(3, 2, (2, 2), "sbs", seeds, W=2, **kw)
        scan(3, 2, (3, 1), "wo", seeds, **kw)
