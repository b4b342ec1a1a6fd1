"""Block verification (docs/algorithms.md §9) against token verification, side by side in one run.

    python benchmarks/block_verify.py                    # kernel time + synthetic tau (a few minutes)
    python benchmarks/block_verify.py --sections time    # only the kernel timing
    python benchmarks/block_verify.py --sections lab --lab-prompts 24   # the miniature lab's decoder
    python benchmarks/block_verify.py --markdown benchmarks/results/block-verify-X.csv
    python benchmarks/block_verify.py --sections trees      # trees: rule "block" against "token"
    python benchmarks/block_verify.py --quick --sections time synthetic lab trees --out /tmp/b.csv

Sections (each writes its rows to the CSV as soon as it ends):

  time       verify_chain(rule="block") / verify_chain(rule="token") on the cpu backend, one torch
             thread, check=False and check=True, stochastic and deterministic drafts, at
             B=16 K=5 V=32000 and B=64 K=8 V=128256 (the issue's goal: at most 1.5x). Inputs are the
             benchmark suite's realistic rows (benchmarks/conftest.py make_inputs); the two rules are
             timed call by call, interleaved, and compared by their medians. Both results are
             checked against the reference on the first rows first.
  synthetic  mean tokens per round (accepted drafts + 1) of both rules on the same drafts and draws:
             LM-like target rows at temperature T in {0.7, 1.0}, drafters = the target's logits plus
             N(0, sigma^2) noise, sigma in {0.5, 1, 2}, K = 5, V = 32000, 4096 rounds each; the
             gain's standard error from the paired differences.
  lab        the miniature lab's decoder (sd, gamma 3 and 5, text and image drafters) with
             verify="token" and "block" at T = 0.7 and 1.0: tau and tokens/s.
  real       SmolLM2-135M with its distilled drafter (sd, gamma 3 and 5, T = 0.7 and 1.0, held-out
             prompts): every round's drafts and p, q rows are recorded and both rules' EXACT
             expected accepted tokens given those drafts are computed (§1 and §9 formulas in
             float64). The drafts are draws from q, so the mean over rounds estimates each rule's
             expectation, paired on the same rounds: far less noisy than comparing two decodes,
             whose texts diverge.
  trees      verify_tree(rule="block") (Traversal Verification) against rule "token" (recursive
             rejection sampling) on the same trees and draws: the Markov-chain model of
             benchmarks/tree_block_efficiency.py (V = 64, three drafters), RSD-C trees drawn
             without replacement and i.i.d., 20000 rounds each; tokens per round with the paired
             standard error.

The real model (SmolLM2-135M with its distilled drafter) is measured by the real-model benchmark
itself, whose systems include both rules (specdec.compare: sd / sd_block, sd_v16k / sd_v16k_block):

    python benchmarks/real_model_speed.py --systems sd sd_block sd_v16k sd_v16k_block \
        --temperatures 0.7 1.0 --threads 2 --heldout 8 --repetition 0

Rows carry date, commit, device, torch version and threads; ``ratio`` is block / token.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import math
import os
import statistics
import sys
import time

import torch

import specdec_kernels as sk
import specdec_kernels.testing as skt
from specdec_kernels import reference

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ["date", "commit", "device", "torch", "section", "case", "B", "K", "V", "dtype", "temperature",
           "threads", "token", "block", "ratio", "se", "n", "unit"]
SECTIONS = ("time", "synthetic", "lab", "real", "trees")
TIME_SHAPES = ((16, 5, 32000), (64, 8, 128256))
QUICK_SHAPES = ((4, 3, 1000),)  # --quick: a smoke test of every section, not a measurement


def _load(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is no package): conftest.py for the suite's
    inputs and device name, record.py for the commit and file-name slug."""
    spec = importlib.util.spec_from_file_location(f"specdec_bench_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load("conftest")
record = _load("record")


class Writer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.meta = {"date": datetime.date.today().isoformat(), "commit": record.git_commit(),
                     "device": bench.device_name("cpu"), "torch": torch.__version__}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            csv.DictWriter(f, COLUMNS).writeheader()

    def add(self, **row) -> None:
        row = {**self.meta, **row}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})
        print(", ".join(f"{k}={row[k]}" for k in COLUMNS[4:] if row.get(k, "") != ""), flush=True)


def _median_pair(fa, fb, reps: int) -> tuple[float, float]:
    """Medians (seconds) of fa and fb, timed call by call, interleaved (order alternating)."""
    ta, tb = [], []
    for i in range(reps):
        for f, t in ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta)):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def section_time(w: Writer, reps: int, shapes=TIME_SHAPES) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    for B, K, V in shapes:
        inp = bench.make_inputs("cpu", B, K, V, "float32")
        for drafts in ("stochastic", "deterministic"):
            q = inp.q if drafts == "stochastic" else None
            m = min(B, 4)
            for rule in ("token", "block"):
                exp = reference.verify_chain(inp.x[:m], inp.p[:m], None if q is None else q[:m],
                                             seed=inp.seed[:m], offset=inp.offset, rule=rule, check=False)
                got = sk.verify_chain(inp.x, inp.p, q, seed=inp.seed, offset=inp.offset, rule=rule)
                skt.check_chain(got, exp, K, V)
            taus = {r: float(sk.verify_chain(inp.x, inp.p, q, seed=inp.seed, offset=inp.offset, rule=r)
                             .num_accepted.double().mean()) for r in ("token", "block")}
            for check in (False, True):
                def call(rule, check=check, q=q, inp=inp):
                    return lambda: sk.verify_chain(inp.x, inp.p, q, seed=inp.seed, offset=inp.offset,
                                                   rule=rule, check=check)

                for _ in range(3):  # warm-up
                    call("token")()
                    call("block")()
                tt, tb = _median_pair(call("token"), call("block"), reps)
                w.add(section="time", case=f"{drafts} check={check} (mean accepted {taus['token']:.2f} / "
                      f"{taus['block']:.2f})", B=B, K=K, V=V, dtype="float32", threads=1,
                      token=f"{tt * 1e6:.1f}", block=f"{tb * 1e6:.1f}", ratio=f"{tb / tt:.3f}", n=reps,
                      unit="median us per call")
        del inp
        bench._INPUT_CACHE.clear()
    torch.set_num_threads(before)


def synthetic_round(B: int, K: int, V: int, temperature: float, sigma: float, seed: int):
    """LM-like rows (specdec_kernels.testing.make_chain_inputs's target recipe) at a temperature;
    drafter = noisy logits."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(B, K + 1, V, generator=g)
    mode = torch.randint(0, V, (B, K + 1, 1), generator=g)
    c = torch.rand(B, K + 1, 1, generator=g) * 6.0 - 2.0
    z.scatter_add_(-1, mode, math.log(V) + 2.0 + c)
    zq = z[:, :K] + sigma * torch.randn(B, K, V, generator=g)
    p = torch.softmax(z / temperature, -1)
    q = torch.softmax(zq / temperature, -1)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    return x, p, q


def section_synthetic(w: Writer, rounds: int, V: int = 32000) -> None:
    K, B = 5, min(512, rounds)
    for T in (0.7, 1.0):
        for sigma in (0.5, 1.0, 2.0):
            diffs, tok, blk = [], [], []
            for chunk in range(rounds // B):
                seed = 1000 * chunk + int(10 * sigma) + int(100 * T)
                x, p, q = synthetic_round(B, K, V, T, sigma, seed=seed)
                a = sk.verify_chain(x, p, q, seed=chunk, rule="token").num_accepted.double() + 1
                b = sk.verify_chain(x, p, q, seed=chunk, rule="block").num_accepted.double() + 1
                tok.append(a)
                blk.append(b)
                diffs.append(b - a)
            a, b, d = torch.cat(tok), torch.cat(blk), torch.cat(diffs)
            w.add(section="synthetic", case=f"drafter noise sigma={sigma:g}", B=d.numel(), K=K, V=V,
                  dtype="float32", temperature=T, threads=torch.get_num_threads(),
                  token=f"{float(a.mean()):.4f}", block=f"{float(b.mean()):.4f}",
                  ratio=f"{float(b.mean()) / float(a.mean()):.4f}",
                  se=f"{float(d.std()) / d.numel() ** 0.5:.4f}",
                  n=d.numel(), unit="tokens per round")


def section_lab(w: Writer, prompts: int, max_new_tokens: int) -> None:
    import tempfile

    from specdec.lab import demo

    configs = [demo.DemoConfig("sd", drafter=d, gamma=g, verify=v)
               for g in (3, 5) for d in ("text", "image") for v in ("token", "block")]
    with tempfile.TemporaryDirectory() as out:
        rows = demo.run_demo(out_dir=out, prompts=prompts, max_new_tokens=max_new_tokens,
                             temperatures=(0.7, 1.0), configs=configs, progress=False,
                             log=lambda *a, **k: None)
    by = {(r["shape"], r["drafter"], r["temperature"], r["verify"]): r for r in rows}
    for (shape, drafter, T, v), r in by.items():
        if v != "token":
            continue
        b = by[(shape, drafter, T, "block")]
        for unit, key in (("tokens per round", "tau"), ("tokens/s", "tokens_per_s")):
            w.add(section="lab", case=f"sd {shape} / {drafter} drafter ({prompts} prompts)", temperature=T,
                  threads=torch.get_num_threads(), token=f"{r[key]:.4f}", block=f"{b[key]:.4f}",
                  ratio=f"{b[key] / r[key]:.4f}", n=r["rounds"], unit=unit)


def expected_accepted(x: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> tuple[float, float]:
    """Exact E[accepted drafts | drafts x] of rule "token" and rule "block" for one round
    (x [K], p [K+1, V], q [K, V]), in float64 (docs/algorithms.md §1, §9)."""
    p, q = p.double(), q.double()
    K = x.numel()
    ratio = (p[torch.arange(K), x] / q[torch.arange(K), x]).tolist()
    token, alive = 0.0, 1.0
    w = [1.0]
    for r in ratio:
        alive *= min(1.0, r)
        token += alive
        w.append(min(1.0, w[-1] * r))
    h = []
    for i in range(1, K + 1):
        if i == K:
            h.append(w[K])
            continue
        m = float(torch.clamp(w[i] * p[i] - q[i], min=0.0).sum())
        den = m + 1.0 - w[i]
        h.append(1.0 if den <= 0 else m / den)
    block, tail = 0.0, 1.0  # P(tau = i) = h_i prod_{j > i} (1 - h_j)
    for i in range(K, 0, -1):
        block += i * h[i - 1] * tail
        tail *= 1.0 - h[i - 1]
    return token, block


def section_real(w: Writer, prompts: int, max_new_tokens: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from specdec import SpeculativeDecoder, compare
    from specdec import prompts as prompt_sets

    target, drafter, tok = compare.load_real("smollm2-135m", "smollm2-drafter", "bfloat16")
    texts = prompt_sets.heldout_prompts(prompts)
    for gamma in (3, 5):
        dec = SpeculativeDecoder(target, drafter, method="sd", gamma=gamma)
        for T in (0.7, 1.0):
            rounds = []
            real_verify = sk.verify_chain

            def record(x, p, q, rounds=rounds, real_verify=real_verify, **kw):
                rounds.append(expected_accepted(x[0], p[0], q[0]))
                return real_verify(x, p, q, **kw)

            sk.verify_chain = record
            try:
                for i, text in enumerate(texts):
                    ids = torch.tensor([compare.encode_chat(tok, text)])
                    dec.generate(ids, max_new_tokens=max_new_tokens, temperature=T, seed=i,
                                 eos_token_id=tok.eos_token_id)
            finally:
                sk.verify_chain = real_verify
            t = torch.tensor(rounds, dtype=torch.float64)
            d = t[:, 1] - t[:, 0]
            w.add(section="real", case=f"SmolLM2-135M + smollm2-drafter, gamma {gamma} ({prompts} prompts x "
                  f"{max_new_tokens} tokens, exact given the drafts)", K=gamma, V=49152, dtype="bfloat16",
                  temperature=T, threads=torch.get_num_threads(), token=f"{float(t[:, 0].mean()) + 1:.4f}",
                  block=f"{float(t[:, 1].mean()) + 1:.4f}",
                  ratio=f"{(float(t[:, 1].mean()) + 1) / (float(t[:, 0].mean()) + 1):.4f}",
                  se=f"{float(d.std()) / d.numel() ** 0.5:.4f}", n=d.numel(), unit="tokens per round")


TREE_SHAPES = ((1, 1, 1), (2, 2), (3, 3), (2, 2, 2), (4, 2, 1))


def section_trees(w: Writer, rounds: int) -> None:
    spec = importlib.util.spec_from_file_location("specdec_bench_tree_eff",
                                                  os.path.join(HERE, "tree_block_efficiency.py"))
    te = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(te)
    g = torch.Generator().manual_seed(0)
    V = 64
    T = 2.0 * torch.randn(V, V, generator=g)  # the same model as tree_block_efficiency.py
    P = torch.softmax(T, -1)
    noise = torch.randn(V, V, generator=g)
    for dname, (sigma, a) in te.DRAFTS.items():
        Q = torch.softmax(a * (T + sigma * noise), -1)
        for shape in TREE_SHAPES:
            for repl in (False, True):
                if repl and all(b == 1 for b in shape):
                    continue
                gs = torch.Generator().manual_seed(len(shape) * 100 + sum(shape) + int(repl))
                parents = torch.tensor(te.tree_parents(shape))
                N = parents.numel()
                state = torch.zeros(rounds, N, dtype=torch.long)
                state[:, 0] = torch.randint(0, V, (rounds,), generator=gs)
                for n in range(N):
                    kids = (parents == n).nonzero().flatten()
                    if kids.numel():
                        state[:, kids] = te.draw_children(Q[state[:, n]], kids.numel(), repl, gs)
                args = (state, parents.expand(rounds, N).contiguous(), P[state], Q[state])
                t = {r: sk.verify_tree(*args, replacement=repl, seed=7, rule=r).num_accepted.double() + 1
                     for r in ("token", "block")}
                d = t["block"] - t["token"]
                w.add(section="trees", case=f"{dname}, {'i.i.d.' if repl else 'without replacement'}, "
                      f"tree {'-'.join(map(str, shape))}", B=rounds, K=N - 1, V=V, dtype="float32",
                      temperature=1.0, threads=torch.get_num_threads(),
                      token=f"{float(t['token'].mean()):.4f}", block=f"{float(t['block'].mean()):.4f}",
                      ratio=f"{float(t['block'].mean()) / float(t['token'].mean()):.4f}",
                      se=f"{float(d.std()) / rounds ** 0.5:.4f}", n=rounds, unit="tokens per round")


def markdown(path: str) -> str:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for sec in SECTIONS:
        rs = [r for r in rows if r["section"] == sec]
        if not rs:
            continue
        out.append(f"**{sec}** ({rs[0]['device']}, torch {rs[0]['torch']}, commit {rs[0]['commit']})\n")
        out.append("| case | shape | T | unit | token | block | block / token |")
        out.append("|---|---|---|---|---|---|---|")
        for r in rs:
            shape = f"B={r['B']} K={r['K']} V={r['V']}" if r["V"] else ""
            if sec == "trees":
                shape = f"{r['K']} drafted nodes, V={r['V']}"
            se = (f" (+{float(r['block']) - float(r['token']):.3f} ± {float(r['se']):.3f} tokens)"
                  if r["se"] else "")
            out.append(f"| {r['case']} | {shape} | {r['temperature']} | {r['unit']} | {r['token']} | "
                       f"{r['block']} | {r['ratio']}{se} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", default=["time", "synthetic"], choices=SECTIONS)
    ap.add_argument("--reps", type=int, default=41, help="timed calls per rule and configuration")
    ap.add_argument("--rounds", type=int, default=4096, help="synthetic rounds per configuration")
    ap.add_argument("--lab-prompts", type=int, default=24)
    ap.add_argument("--tree-rounds", type=int, default=20000, help="rounds per tree setting")
    ap.add_argument("--real-prompts", type=int, default=16, help="held-out prompts of the real section")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=None, help="CSV path (default: benchmarks/results/block-verify-...)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes for every section (a smoke test: seconds, no meaningful numbers)")
    ap.add_argument("--markdown", metavar="CSV", help="print the tables of a results CSV and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    path = args.out or os.path.join(HERE, "results", f"block-verify-{record.slug(bench.device_name('cpu'))}-"
                                    f"{datetime.date.today().isoformat()}-{record.git_commit()}.csv")
    w = Writer(path)
    if "time" in args.sections:
        section_time(w, 3 if args.quick else args.reps, QUICK_SHAPES if args.quick else TIME_SHAPES)
    if "synthetic" in args.sections:
        section_synthetic(w, 256 if args.quick else args.rounds, 1000 if args.quick else 32000)
    if "lab" in args.sections:
        section_lab(w, 1 if args.quick else args.lab_prompts, 8 if args.quick else args.max_new_tokens)
    if "real" in args.sections:
        section_real(w, 1 if args.quick else args.real_prompts, 8 if args.quick else args.max_new_tokens)
    if "trees" in args.sections:
        section_trees(w, 200 if args.quick else args.tree_rounds)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
