"""Real-model speed: specdec against Hugging Face generate, assisted generation and prompt lookup on
SmolLM2-135M, side by side in one process (issue 16's comparison).

    python benchmarks/real_model_speed.py                       # the full grid (about 1.5 h on 2 cores)
    python benchmarks/real_model_speed.py --heldout 4 --repetition 2 --max-new-tokens 32 --threads 1
    python benchmarks/real_model_speed.py --markdown benchmarks/results/real-model-...-summary.csv
    python benchmarks/real_model_speed.py --replot benchmarks/results/real-model-....csv   # summary + chart

Writes, under benchmarks/results/ (or --out PREFIX): PREFIX.csv (one row per generation, appended as
each finishes, so an interrupted run keeps what it measured), PREFIX-summary.csv (medians per
system) and PREFIX.png (the chart). Every row carries the date, commit, CPU, torch and transformers
versions. The systems and their draft shapes are specdec.compare.SYSTEMS.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def default_prefix(compare) -> str:
    cpu = _slug(compare.cpu_name().split(" ")[0] + " " + str(os.cpu_count()) + " cpus")
    return os.path.join(HERE, "results", f"real-model-{cpu}-{time.strftime('%Y-%m-%d')}-{compare._commit()}")


def markdown(summary_csv: str) -> str:
    """The README's table: one line per system, one column per (prompt set, T, threads)."""
    with open(summary_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = list(dict.fromkeys((r["prompt_set"], r["temperature"], r["threads"]) for r in rows))
    systems = list(dict.fromkeys((r["system"], r["shape"]) for r in rows))
    cell = {(r["system"], r["prompt_set"], r["temperature"], r["threads"]): r for r in rows}
    head = ["system", "draft"] + [f"{s} T={float(t):g} {n}t" for s, t, n in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, shape in systems:
        vals = []
        for s, t, n in cols:
            r = cell.get((name, s, t, n))
            if r is None:
                vals.append("")
                continue
            v, tps = float(r["median_speedup_vs_hf"]), float(r["median_tokens_per_s"])
            vals.append(f"{v:.2f}x ({tps:.0f}/s)")
        lines.append("| " + " | ".join([name, shape] + vals) + " |")
    r0 = rows[0]
    lines.append("")
    lines.append(
        f"Median over prompts of the per-prompt speed-up over HF `generate()` (median tokens/s); "
        f"{r0['cpu']}, torch {r0['torch']}, transformers {r0['transformers']}, {r0['dtype']}, "
        f"commit {r0['commit']}, {r0['date']}; from `{os.path.relpath(summary_csv, os.path.dirname(HERE))}`."
    )
    return "\n".join(lines)


def _title(dtype: str, cpu: str) -> str:
    return f"SmolLM2-135M ({dtype}) on {cpu}: median speed-up over HF generate"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heldout", type=int, default=24, help="held-out prompts (default: %(default)s)")
    ap.add_argument(
        "--repetition", type=int, default=24, help="repetition-heavy prompts (default: %(default)s)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.7])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--systems", nargs="+", default=None, help="default: every system of specdec.compare")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--drafter", default="smollm2-drafter")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output prefix (default: benchmarks/results/real-model-...)")
    ap.add_argument(
        "--markdown", metavar="SUMMARY_CSV", help="print the README table of a summary CSV and exit"
    )
    ap.add_argument(
        "--replot",
        metavar="ROWS_CSV",
        help="write PREFIX-summary.csv and PREFIX.png again from a run's PREFIX.csv and exit",
    )
    a = ap.parse_args(argv)
    if a.markdown:
        print(markdown(a.markdown))
        return 0
    if a.replot:
        from specdec import compare

        prefix = a.replot.removesuffix(".csv")
        rows = compare.read_rows(a.replot)
        summary = compare.summarize(rows)
        compare.write_csv(summary, prefix + "-summary.csv", compare.SUMMARY_COLUMNS)
        compare.plot(summary, prefix + ".png", title=_title(rows[0]["dtype"], rows[0]["cpu"]))
        print(compare.format_table(summary))
        print(f"\nwrote {prefix}-summary.csv, {prefix}.png")
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from specdec import compare
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    prefix = a.out or default_prefix(compare)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    target, drafter, tok = compare.load_real(a.target, a.drafter, a.dtype)
    prompts = compare.default_prompts(a.heldout, a.repetition)
    prompts = {k: v for k, v in prompts.items() if v}
    systems = a.systems or [s.name for s in compare.SYSTEMS]

    rows_path = prefix + ".csv"
    f = open(rows_path, "w", newline="", encoding="utf-8")
    w = csv.DictWriter(f, fieldnames=compare.COLUMNS, extrasaction="ignore")
    w.writeheader()

    def on_row(r: dict) -> None:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        f.flush()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        rows = compare.run(
            target,
            drafter,
            tok,
            prompts,
            systems=systems,
            temperatures=a.temperatures,
            threads=a.threads,
            max_new_tokens=a.max_new_tokens,
            seed=a.seed,
            log=log,
            on_row=on_row,
        )
    finally:
        f.close()
    summary = compare.summarize(rows)
    compare.write_csv(summary, prefix + "-summary.csv", compare.SUMMARY_COLUMNS)
    compare.plot(
        summary,
        prefix + ".png",
        title=_title(a.dtype, compare.cpu_name()),
    )
    print(compare.format_table(summary))
    print(f"\nwrote {rows_path}, {prefix}-summary.csv, {prefix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
