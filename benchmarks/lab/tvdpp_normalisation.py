"""Which TVD++ normalisation trains the better drafter (docs/algorithms.md §7 leaves it open)?

Distils the shipped pretrained text-only drafter against the shipped target with TVD++ under
``normalize="vocab"`` and ``"batch"``, for several batch orders each, with the lab's schedule, and
scores each drafter by its exact acceptance probability at temperature 1 on the lab's held-out
target-generated set. Writes one CSV row per run:

    python benchmarks/lab/tvdpp_normalisation.py --orders 0-5 --out benchmarks/results/X.csv
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import time

import torch
from specdec.lab import models as lab_models
from specdec.lab import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", default="0-5", help="batch orders, 'A-B' inclusive")
    ap.add_argument("--losses", default="tvdpp_vocab,tvdpp_batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lo, hi = (int(x) for x in args.orders.split("-"))
    sched = train.Schedule()
    target = lab_models.load("target")
    pretrained = lab_models.load("pretrained")
    quiet = lambda *_: None  # noqa: E731
    train_set = train.distillation_set(target, sched.distill_examples, seed=sched.seed + 7_000_000, log=quiet)
    heldout = train.distillation_set(target, sched.heldout_examples, seed=sched.seed + 9_000_000, log=quiet)
    rows = []
    for loss in args.losses.split(","):
        for order in range(lo, hi + 1):
            t0 = time.perf_counter()
            student = copy.deepcopy(pretrained).train()
            train.distil(student, train_set, loss, sched, order=order, log=quiet)
            alpha = train.acceptance(student, heldout)
            rows.append({"date": datetime.date.today().isoformat(), "loss": loss, "order": order,
                         "acceptance_t1": f"{alpha:.4f}", "seconds": f"{time.perf_counter() - t0:.0f}"})
            print(rows[-1], flush=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
