"""Block efficiency of tree verification: siblings drawn WITHOUT replacement (RSD) vs i.i.d.

RSD (Jeon et al. 2024) claims that drafting the siblings of a node without replacement (Gumbel-Top-k)
and verifying them with recursive rejection sampling (``verify_tree(replacement=False)``) accepts
more than i.i.d. siblings verified with the multi-draft rule (``replacement=True``, SpecInfer-style),
at the same tree shape and on the same target p and draft q. Both are exact, so the emitted text has
the same law; only the number of tokens per target forward differs.

This script measures it. The "language model" is an order-1 Markov chain over V tokens: the target
is p(.|s) = softmax(T[s]) and the draft q(.|s) = softmax(a * (T[s] + sigma * noise[s])) for three
drafts (close, noisy, over-confident). One round starts from a random token s, grows an RSD-C tree
(branching b_l at depth l, every node's children drawn from q of that node's token) and verifies it;
block efficiency tau = E[num_accepted + 1] (tokens per target forward), averaged over many rounds
(one batch row per round), with its standard error. A chain of the same depth is the baseline.

    python benchmarks/tree_block_efficiency.py               # prints a markdown table, writes a CSV
    python benchmarks/tree_block_efficiency.py --rounds 2000  # quicker

Results land in benchmarks/results/tree-block-efficiency-<commit>.csv (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import zlib
from datetime import date

import torch

import specdec_kernels as sk

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from record import git_commit  # noqa: E402

SHAPES = [(1, 1), (2, 2), (3, 3), (4, 4), (1, 1, 1), (2, 2, 2), (4, 2, 1)]
DRAFTS = {  # name: (sigma: logit noise, a: inverse temperature of the draft)
    "close (sigma=0.5)": (0.5, 1.0),
    "noisy (sigma=1.5)": (1.5, 1.0),
    "over-confident (sigma=0.5, a=3)": (0.5, 3.0),
}


def tree_parents(branching: tuple[int, ...]) -> list[int]:
    """Parents of the RSD-C tree with these branching factors, nodes in BFS order (root = 0)."""
    parents, level = [-1], [0]
    for b in branching:
        nxt = []
        for node in level:
            for _ in range(b):
                parents.append(node)
                nxt.append(len(parents) - 1)
        level = nxt
    return parents


def draw_children(q_rows: torch.Tensor, k: int, replacement: bool, g: torch.Generator) -> torch.Tensor:
    """k children per row of q: i.i.d. (multinomial with replacement) or without replacement
    (Gumbel-top-k, in draw order)."""
    if replacement:
        return torch.multinomial(q_rows, k, replacement=True, generator=g)
    u = torch.rand(q_rows.shape, generator=g).clamp_min(1e-30)
    return torch.topk(torch.log(q_rows) - torch.log(-torch.log(u)), k, -1).indices


def one_setting(P, Q, branching, replacement: bool, rounds: int, seed: int) -> tuple[float, float]:
    """(tau, standard error) of one tree shape and sibling scheme over ``rounds`` rounds."""
    V = P.shape[0]
    g = torch.Generator().manual_seed(seed)
    parents = torch.tensor(tree_parents(branching))
    N = parents.numel()
    state = torch.zeros(rounds, N, dtype=torch.long)
    state[:, 0] = torch.randint(0, V, (rounds,), generator=g)
    for n in range(N):
        kids = (parents == n).nonzero().flatten()
        if kids.numel():
            state[:, kids] = draw_children(Q[state[:, n]], kids.numel(), replacement, g)
    out = sk.verify_tree(state, parents.expand(rounds, N).contiguous(), P[state], Q[state],
                         replacement=replacement, seed=seed)
    tau = out.num_accepted.double() + 1
    return float(tau.mean()), float(tau.std() / math.sqrt(rounds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20000, help="rounds (batch rows) per setting")
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--out", default=None, help="CSV path (default benchmarks/results/...)")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    V = args.vocab
    T = 2.0 * torch.randn(V, V, generator=g)
    P = torch.softmax(T, -1)
    noise = torch.randn(V, V, generator=g)
    commit = git_commit()
    rows = []
    for dname, (sigma, a) in DRAFTS.items():
        Q = torch.softmax(a * (T + sigma * noise), -1)
        beta = float(torch.minimum(P, Q).sum(-1).mean())
        for shape in SHAPES:
            res = {}
            for repl in (False, True):
                if all(b == 1 for b in shape) and repl:
                    continue  # a chain has no siblings: both rules are verify_chain
                seed = zlib.crc32(f"{dname}{shape}".encode())
                res[repl] = one_setting(P, Q, shape, repl, args.rounds, seed=seed)
            wo, iid = res[False], res.get(True, res[False])
            rows.append({"date": date.today().isoformat(), "commit": commit, "vocab": V, "draft": dname,
                         "acceptance_beta": f"{beta:.3f}", "shape": "-".join(map(str, shape)),
                         "nodes": len(tree_parents(shape)), "rounds": args.rounds,
                         "tau_without_replacement": f"{wo[0]:.4f}", "se_without": f"{wo[1]:.4f}",
                         "tau_iid": f"{iid[0]:.4f}", "se_iid": f"{iid[1]:.4f}",
                         "gain_percent": f"{100 * (wo[0] / iid[0] - 1):.2f}"})
    out = args.out or os.path.join(HERE, "results", f"tree-block-efficiency-{commit}.csv")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("| draft (mean 1-TV) | tree | nodes | tau without replacement | tau i.i.d. | gain |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['draft']} ({r['acceptance_beta']}) | {r['shape']} | {r['nodes']} | "
              f"{r['tau_without_replacement']} ± {r['se_without']} | {r['tau_iid']} ± {r['se_iid']} | "
              f"{r['gain_percent']}% |")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
