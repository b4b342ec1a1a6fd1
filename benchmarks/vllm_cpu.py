"""vLLM on the CPU with and without the specdec plugin: tokens/s of the same prompts, same run.

Runs in the vLLM venv (``bash scripts/vllm_venv.sh .venv-vllm``), from the repository root, with ``-P``
(the root's ``specdec_kernels`` holds a ``_C`` built for another torch), on an otherwise idle machine:

    .venv-vllm/bin/python -P benchmarks/vllm_cpu.py                  # the full grid, 3 repetitions
    .venv-vllm/bin/python -P benchmarks/vllm_cpu.py --quick          # smoke run (a few minutes)
    .venv-vllm/bin/python -P benchmarks/vllm_cpu.py --reps 5 --max-tokens 256 --in-process

The default grid runs vLLM as a user would (multiprocess engine, torch.compile): 8 configurations x
3 repetitions of an engine start (a minute or more on 2 cores: the compile is not cached across
runs) and 8 prompts x 128 tokens one request at a time, the better part of an hour on 2 cores;
``--in-process --enforce-eager`` (the recorded runs) takes about 12 minutes: those engines start in
seconds (the CSV's engine_start_s_median) and were the fastest per token on 2 cores, too.

Target SmolLM2-135M-Instruct, drafter the shipped distilled ``smollm2-drafter`` (k drafts per step,
vLLM's ``draft_model`` method). The configurations (:data:`CONFIGS`), each at the temperatures given:

* ``vllm``: vLLM without speculative decoding, the baseline a user would otherwise run;
* ``off``: vLLM's speculative decoding with its own rejection sampler (greedy drafts, vLLM's default).
  At T > 0 vllm-cpu 0.32's sampler divides the target logits by uninitialised memory
  (``expand_batch_to_tokens``), so its output there is garbage (random tokens, next to no draft
  accepted); the ``text_sample`` column (the start of the first output) shows it;
* ``token``: the plugin, standard rule, greedy drafts (vLLM's default drafts);
* ``token_prob``: the plugin, standard rule, probabilistic drafts (the drafts block verification needs);
* ``block``: the plugin, block verification, probabilistic drafts.

Every engine runs in a fresh interpreter (:func:`specdec.vllm.run.run_in_subprocess`: the plugin cannot
be unloaded from a process); the configurations alternate within each repetition, in an order rotated
from one repetition to the next, so a change in the machine's load spreads over all of them. Each run
generates once to warm up, then times one ``generate`` pass over the prompts (``--batch-size`` requests
at a time; engine start excluded). Requests are seeded (``SamplingParams(seed=...)``), ``ignore_eos``
keeps the work the same across configurations.

Writes ``benchmarks/results/vllm-cpu-<device>-<date>-<commit>.csv`` (``--quick``: a temporary file
unless ``--out``): one row per (configuration, temperature) with the median tokens/s and the value of
every repetition, the speed-up over ``vllm`` at the same temperature, vLLM's acceptance counters
(pooled over repetitions: drafts, draft tokens, accepted tokens, mean accepted tokens per
verification round, acceptance per position), the engine start and generate times, versions, device
and commit. ``--json`` also keeps every run's full report.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from record import git_commit, slug  # noqa: E402

#: name -> (plugin, draft_sample, k or None for "the --k flag", temperatures ("T" = --temperature))
CONFIGS: dict[str, tuple[str, str, int | None, tuple[str, ...]]] = {
    "vllm": ("off", "greedy", 0, ("0", "T")),
    "off": ("off", "greedy", None, ("0", "T")),
    "token": ("token", "greedy", None, ("0", "T")),
    "token_prob": ("token", "probabilistic", None, ("T",)),
    "block": ("block", "probabilistic", None, ("T",)),
}

FIELDS = [
    "date", "commit", "device", "vllm", "torch", "transformers", "specdec", "config", "plugin", "rule",
    "draft_sample", "temperature", "k", "mode", "enforce_eager", "prompt_set", "prompts", "max_tokens",
    "batch_size", "reps", "tokens_per_s_median", "tokens_per_s_reps", "speedup_vs_vllm",
    "generate_s_median", "engine_start_s_median", "generated_tokens", "num_drafts", "num_draft_tokens",
    "num_accepted_tokens", "mean_accepted_per_round", "mean_tokens_per_round", "acceptance_rate",
    "acceptance_per_pos", "same_tokens_across_reps", "text_sample",
]


def device_slug(device: str) -> str:
    """``AMD EPYC (2 cpus)`` -> ``amd-epyc-2-cpus`` (the first word of the model name, as the other
    result files)."""
    m = re.match(r"(.*) \((\d+) cpus\)$", device)
    name, n = (m.group(1), m.group(2)) if m else (device, str(os.cpu_count()))
    return slug(" ".join(name.split()[:2]) + f" {n} cpus")


def plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    """The (configuration, temperature) pairs to run, in :data:`CONFIGS` order."""
    wanted = args.configs.split(",") if args.configs else list(CONFIGS)
    unknown = [c for c in wanted if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    out = []
    for name in wanted:
        for t in CONFIGS[name][3]:
            temp = 0.0 if t == "0" else args.temperature
            if (name, temp) not in out:
                out.append((name, temp))
    return out


def config_for(name: str, temperature: float, args: argparse.Namespace) -> dict[str, Any]:
    plugin, draft_sample, k, _ = CONFIGS[name]
    env = {}
    if args.no_iomp:
        env["LD_PRELOAD"] = ""
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)
    return {
        "target": args.target,
        "drafter": args.drafter,
        "k": args.k if k is None else k,
        "prompt_set": args.prompt_set,
        "num_prompts": args.prompts,
        "temperature": temperature,
        "request_seed": 0,
        "max_tokens": args.max_tokens,
        "ignore_eos": not args.no_ignore_eos,
        "batch_size": args.batch_size or None,
        "plugin": plugin,
        "draft_sample": draft_sample,
        "enforce_eager": args.enforce_eager,
        "in_process": args.in_process,
        "kv_cache_gib": 1.0,
        "env": env,
    }


def summarise(key: tuple[str, float], reports: list[dict[str, Any]], args: argparse.Namespace,
              commit: str) -> dict[str, Any]:
    name, temperature = key
    plugin, draft_sample, _, _ = CONFIGS[name]
    first = reports[0]
    tps = [r["tokens_per_s"] for r in reports]
    row: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "device": first["device"],
        **{v: first["versions"].get(v, "") for v in ("vllm", "torch", "transformers", "specdec")},
        "config": name,
        "plugin": plugin,
        "rule": {"off": "vllm", "token": "token", "block": "block"}[plugin],
        "draft_sample": first["config"]["draft_sample_resolved"] or "",
        "temperature": temperature,
        "k": first["config"]["k"],
        "mode": "in-process" if args.in_process else "multiprocess",
        "enforce_eager": args.enforce_eager,
        "prompt_set": args.prompt_set,
        "prompts": len(first["outputs"]),
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size or len(first["outputs"]),
        "reps": len(reports),
        "tokens_per_s_median": round(statistics.median(tps), 2),
        "tokens_per_s_reps": ";".join(f"{v:.2f}" for v in tps),
        "generate_s_median": round(statistics.median(r["generate_s"] for r in reports), 3),
        "engine_start_s_median": round(statistics.median(r["engine_start_s"] for r in reports), 1),
        "generated_tokens": round(statistics.median(r["generated_tokens"] for r in reports)),
    }
    if not first["config"]["k"]:  # no speculative decoding: no drafts, no rule
        row["draft_sample"] = row["rule"] = ""
    spec = [r["spec_decode"] for r in reports if r["spec_decode"]]
    if spec:
        drafts = sum(s["num_drafts"] for s in spec)
        dtoks = sum(s["num_draft_tokens"] for s in spec)
        acc = sum(s["num_accepted_tokens"] for s in spec)
        per_pos = [sum(p) for p in zip(*(s["accepted_per_pos"] for s in spec), strict=True)]
        row.update(
            num_drafts=drafts, num_draft_tokens=dtoks, num_accepted_tokens=acc,
            mean_accepted_per_round=round(acc / drafts, 4) if drafts else "",
            mean_tokens_per_round=round(1 + acc / drafts, 4) if drafts else "",
            acceptance_rate=round(acc / dtoks, 4) if dtoks else "",
            acceptance_per_pos=";".join(f"{a / drafts:.4f}" for a in per_pos) if drafts else "",
        )
    row["text_sample"] = first["outputs"][0]["text"][:60].replace("\n", " ")
    runs = [[o["token_ids"] for o in r["outputs"]] for r in reports]
    row["same_tokens_across_reps"] = all(r == runs[0] for r in runs)
    return row


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    base = {float(r["temperature"]): r for r in rows if r["config"] == "vllm"}
    for r in rows:
        ref = base.get(float(r["temperature"]))
        r["speedup_vs_vllm"] = (round(r["tokens_per_s_median"] / ref["tokens_per_s_median"], 3)
                                if ref and ref["tokens_per_s_median"] else "")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'config':11s} {'T':>4s} {'k':>2s} {'tok/s':>8s} {'vs vllm':>8s} {'acc/round':>9s} "
             f"{'same':>5s}  reps"]
    for r in rows:
        lines.append(
            f"{r['config']:11s} {float(r['temperature']):4.1f} {r['k']:>2} {r['tokens_per_s_median']:8.1f} "
            f"{r.get('speedup_vs_vllm', ''):>8} {r.get('mean_accepted_per_round', ''):>9} "
            f"{'yes' if r['same_tokens_across_reps'] else 'no':>5}  {r['tokens_per_s_reps']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 rep, 2 prompts, 16 tokens, eager")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--configs", default=None, help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--drafter", default="smollm2-drafter")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.8, help="the sampled temperature")
    ap.add_argument("--prompt-set", default="heldout")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1, help="requests per generate call; 0 = all at once")
    ap.add_argument("--no-ignore-eos", action="store_true", help="stop at EOS (work then differs per config)")
    ap.add_argument("--in-process", action="store_true",
                    help="engine core and worker in one process (VLLM_ENABLE_V1_MULTIPROCESSING=0)")
    ap.add_argument("--enforce-eager", action="store_true", help="no torch.compile (starts ~40 s faster)")
    ap.add_argument("--no-iomp", action="store_true", help="no Intel OpenMP in LD_PRELOAD")
    ap.add_argument("--omp-threads", type=int, default=0, help="OMP_NUM_THREADS for the engine (0: vLLM's)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per engine run")
    ap.add_argument("--out", default=None, help="the CSV (default: benchmarks/results/vllm-cpu-...csv)")
    ap.add_argument("--json", default=None, help="also write every run's report to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.prompts, args.max_tokens, args.enforce_eager = 1, 2, 16, True

    try:
        from specdec.vllm.run import cpu_name, run_in_subprocess
    except ImportError as e:
        raise SystemExit(f"specdec is not importable ({e}): use the vLLM venv (scripts/vllm_venv.sh)") from e
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("vLLM is not installed in this interpreter: build the vLLM venv with "
                         "`bash scripts/vllm_venv.sh .venv-vllm` and run it with .venv-vllm/bin/python -P")

    commit = git_commit()
    device = cpu_name()
    if args.out:
        out = args.out
    elif args.quick:
        out = os.path.join(tempfile.mkdtemp(prefix="vllm-cpu-quick-"), "vllm-cpu-quick.csv")
    else:
        out = os.path.join(HERE, "results",
                           f"vllm-cpu-{device_slug(device)}-{datetime.date.today().isoformat()}-{commit}.csv")
    pairs = plan(args)
    print(f"{len(pairs)} configurations x {args.reps} repetitions on {device}, commit {commit} -> {out}",
          flush=True)

    reports: dict[tuple[str, float], list[dict[str, Any]]] = {p: [] for p in pairs}
    t_all = time.perf_counter()
    for rep in range(args.reps):
        order = pairs[rep % len(pairs):] + pairs[: rep % len(pairs)]
        for name, temp in order:
            t0 = time.perf_counter()
            r = run_in_subprocess(config_for(name, temp, args), timeout=args.timeout)
            reports[(name, temp)].append(r)
            sd = r["spec_decode"] or {}
            acc = sd.get("mean_accepted_per_draft")
            print(f"rep {rep + 1}/{args.reps} {name:10s} T={temp:g}: {r['tokens_per_s']:7.1f} tok/s "
                  f"({r['generated_tokens']} tokens in {r['generate_s']:.2f} s; "
                  f"start {r['engine_start_s']:.0f} s; "
                  f"acc/round {'-' if acc is None else f'{acc:.2f}'}; run {time.perf_counter() - t0:.0f} s)",
                  flush=True)
        rows = [summarise(p, reports[p], args, commit) for p in pairs if reports[p]]
        write_csv(out, rows)
    print(table(rows))
    print(f"wrote {out} ({time.perf_counter() - t_all:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{n}@{t:g}": v for (n, t), v in reports.items()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
