"""Batched decoding throughput: total tokens/s at batch sizes 1, 4, 8 on the real model (issue 21).

The same prompts are decoded at every batch size: at B = 1 one at a time, at B = 4 in batches of
four, and so on; total new tokens / total wall time is the throughput. Every system runs at every
batch size in one process, alternated (the batch-size order rotates between repetitions), so the
ratios compare like with like on a noisy shared machine. Hugging Face ``generate()`` batched with
left padding is the baseline a user would otherwise run (its assisted generation does not batch).

    python benchmarks/batch_speed.py                          # ~25 min on 2 cores
    python benchmarks/batch_speed.py --prompts 4 --batch-sizes 1,4 --max-new-tokens 16 --repeats 1
    python benchmarks/batch_speed.py --markdown benchmarks/results/batch-speed-...-summary.csv

Writes PREFIX.csv (one row per (repetition, system, temperature, batch size), appended as each
finishes), PREFIX-summary.csv (medians over repetitions, and the ratio to B = 1 of the same
system and temperature) and PREFIX.png (the chart; ``--replot SUMMARY_CSV`` redraws it); PREFIX
defaults to benchmarks/results/batch-speed-<cpu>-<date>-<commit>.
No EOS stop: every row generates exactly --max-new-tokens tokens, so each batch size does the
same work.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: name -> (kind, SpeculativeDecoder kwargs); kind "hf" = Hugging Face generate, batched
SYSTEMS = {
    "hf": ("hf", {}),
    "ar": ("ours", {"method": "ar"}),
    "sd_v16k": ("ours", {"method": "sd", "gamma": 3, "draft_vocab": 16384}),
    "sd_lookup_v16k": ("ours", {"method": "sd", "gamma": 3, "draft_vocab": 16384, "lookup_min_ngram": 2}),
    "rsd_s": ("ours", {"method": "rsd_s", "width": 3, "depth": 3}),
    # the fused tree attention forced (the decoder's "auto" picks the dense mask on the CPU)
    "rsd_s_fused": ("ours", {"method": "rsd_s", "width": 3, "depth": 3, "tree_attention": "fused"}),
    "lookup": ("ours", {"method": "sd", "gamma": 10, "drafter": "lookup"}),
}
DEFAULT_SYSTEMS = ("hf", "ar", "sd_v16k", "rsd_s")
META = ["date", "commit", "cpu", "torch", "transformers", "dtype", "threads"]
COLUMNS = META + ["system", "temperature", "batch_size", "rep", "prompts", "new_tokens", "wall_s",
                  "tokens_per_s", "block_efficiency", "steps"]


def _left_pad(rows: list[list[int]], pad: int):
    import torch

    P = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _decoder(name: str, target, drafter):
    import specdec

    kind, kw = SYSTEMS[name]
    if kind == "hf":
        return None
    kw = dict(kw)
    d = None
    if kw.pop("drafter", "model") == "lookup":
        d = specdec.PromptLookup()
    elif kw["method"] != "ar":
        d = drafter
    if "lookup_min_ngram" in kw:
        kw["lookup"] = specdec.PromptLookup(min_ngram=kw.pop("lookup_min_ngram"))
    return specdec.SpeculativeDecoder(target, d, **kw)


def _run_batch(name, dec, target, ids, mask, *, temperature: float, max_new_tokens: int, seed: int, pad: int):
    """(new tokens, wall seconds, tau, steps) of one batch."""
    import torch

    t0 = time.perf_counter()
    if dec is None:
        sample = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0
                  else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None})
        torch.manual_seed(seed)
        out = target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                              min_new_tokens=max_new_tokens, pad_token_id=pad, **sample)
        wall = time.perf_counter() - t0
        return (out.shape[1] - ids.shape[1]) * ids.shape[0], wall, 1.0, max_new_tokens
    res = dec.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed)
    wall = time.perf_counter() - t0
    return res.stats.new_tokens, wall, res.stats.block_efficiency, res.stats.steps


def run(args) -> str:
    import torch
    import transformers

    sys.path.insert(0, HERE)
    from record import git_commit, slug
    from specdec import prompts as prompt_sets
    from specdec.compare import cpu_name, load_real
    from specdec.distill import encode_chat

    torch.set_num_threads(args.threads)
    target, drafter, tok = load_real(dtype=args.dtype)
    prompts = [encode_chat(tok, p) for p in prompt_sets.heldout_prompts(args.prompts)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    systems = args.systems.split(",")
    for s in systems:
        if s not in SYSTEMS:
            raise SystemExit(f"unknown system {s!r}; known: {sorted(SYSTEMS)}")
    temps = [float(t) for t in args.temperatures.split(",")]
    commit = git_commit()
    prefix = args.out or os.path.join(
        HERE, "results", f"batch-speed-{slug(' '.join(cpu_name().split()[:2]) + f' {os.cpu_count()} cpus')}-"
        f"{time.strftime('%Y-%m-%d')}-{commit}")
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    meta = dict(zip(META, [time.strftime("%Y-%m-%d"), commit, cpu_name(), torch.__version__,
                           transformers.__version__, args.dtype, args.threads], strict=True))
    decoders = {s: _decoder(s, target, drafter) for s in systems}
    # warm-up: every system once at the largest batch size (allocator, thread pools, lazy inits)
    ids, mask = _left_pad(prompts[: max(sizes)], pad)
    for s in systems:
        _run_batch(s, decoders[s], target, ids, mask, temperature=0.0, max_new_tokens=4, seed=0, pad=pad)
    rows = []
    with open(prefix + ".csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for rep in range(args.repeats):
            order = sizes[rep % len(sizes):] + sizes[: rep % len(sizes)]
            for temp in temps:
                for B in order:
                    for s in systems:
                        new = wall = 0.0
                        taus, steps = [], 0
                        for start in range(0, len(prompts), B):
                            ids, mask = _left_pad(prompts[start : start + B], pad)
                            n, t, tau, st = _run_batch(
                                s, decoders[s], target, ids, mask, temperature=temp,
                                max_new_tokens=args.max_new_tokens, seed=1000 * rep + start, pad=pad)
                            new += n
                            wall += t
                            taus.append(tau)
                            steps += st
                        row = {**meta, "system": s, "temperature": temp, "batch_size": B, "rep": rep,
                               "prompts": len(prompts), "new_tokens": int(new), "wall_s": round(wall, 3),
                               "tokens_per_s": round(new / wall, 2), "block_efficiency":
                               round(statistics.mean(taus), 3), "steps": steps}
                        rows.append(row)
                        w.writerow(row)
                        f.flush()
                        print(f"rep {rep} T={temp:g} B={B} {s}: {row['tokens_per_s']} tok/s "
                              f"(tau {row['block_efficiency']}, {steps} steps)", flush=True)
    summary(rows, prefix + "-summary.csv")
    chart(prefix + "-summary.csv", prefix + ".png")
    print(markdown(prefix + "-summary.csv"))
    return prefix


def summary(rows: list[dict], path: str) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], float(r["temperature"]), int(r["batch_size"])), []).append(r)
    out = []
    for (s, t, B), rs in groups.items():
        med = statistics.median(float(r["tokens_per_s"]) for r in rs)
        tau = statistics.median(float(r["block_efficiency"]) for r in rs)
        out.append({**{k: rs[0][k] for k in META}, "system": s, "temperature": t, "batch_size": B,
                    "repeats": len(rs), "median_tokens_per_s": round(med, 2),
                    "block_efficiency": round(tau, 3)})
    base = {(r["system"], r["temperature"]): r["median_tokens_per_s"] for r in out if r["batch_size"] == 1}
    for r in out:
        b = base.get((r["system"], r["temperature"]))
        r["ratio_vs_b1"] = round(r["median_tokens_per_s"] / b, 3) if b else ""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)


def chart(summary_csv: str, path: str) -> None:
    """Horizontal bars of total tokens/s, one panel per temperature, one group of bars per system
    (one bar per batch size); pillow only."""
    from PIL import Image, ImageDraw, ImageFont

    with open(summary_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    try:
        font, big = ImageFont.load_default(size=13), ImageFont.load_default(size=15)
    except TypeError:  # pillow < 10.1
        font = big = ImageFont.load_default()
    temps = list(dict.fromkeys(r["temperature"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    sizes = sorted({int(r["batch_size"]) for r in rows})
    shades = [(150, 190, 230), (70, 130, 200), (20, 60, 140), (10, 30, 80)]
    cell = {(r["system"], r["temperature"], int(r["batch_size"])): float(r["median_tokens_per_s"])
            for r in rows}
    hi = max(cell.values())
    bar_h, left, bar_w, top = 13, 120, 520, 60
    group_h = bar_h * len(sizes) + 8
    height = top + len(temps) * (30 + group_h * len(systems) + 10)
    img = Image.new("RGB", (left + bar_w + 90, height), "white")
    d = ImageDraw.Draw(img)
    r0 = rows[0]
    d.text((10, 8), f"Total tokens/s by batch size: SmolLM2-135M, {r0['cpu']}, {r0['threads']} threads, "
                    f"{r0['dtype']}", font=big, fill="black")
    x = 10
    for b, col in zip(sizes, shades, strict=False):
        d.rectangle((x, 36, x + 12, 48), fill=col)
        d.text((x + 17, 35), f"B = {b}", font=font, fill="black")
        x += 80
    y = top
    for t in temps:
        d.text((10, y + 5), f"temperature {float(t):g}", font=big, fill="black")
        y += 30
        for s in systems:
            d.text((10, y + group_h // 2 - 10), s, font=font, fill="black")
            for j, (b, col) in enumerate(zip(sizes, shades, strict=False)):
                v = cell.get((s, t, b))
                if v is None:
                    continue
                by = y + j * bar_h
                bx = left + int(v / hi * bar_w)
                d.rectangle((left, by, max(bx, left + 1), by + bar_h - 2), fill=col)
                d.text((bx + 5, by - 1), f"{v:.0f}", font=font, fill="black")
            y += group_h
        y += 10
    img.save(path)


def markdown(summary_csv: str) -> str:
    """The README's table: one line per (system, temperature), tokens/s and the ratio to B = 1."""
    with open(summary_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    sizes = sorted({int(r["batch_size"]) for r in rows})
    keys = list(dict.fromkeys((r["system"], r["temperature"]) for r in rows))
    cell = {(r["system"], r["temperature"], int(r["batch_size"])): r for r in rows}
    lines = ["| system | T | " + " | ".join(f"B={b}" for b in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for s, t in keys:
        vals = []
        for b in sizes:
            r = cell.get((s, t, b))
            if r is None:
                vals.append("")
            elif b == 1 or not r["ratio_vs_b1"]:
                vals.append(f"{float(r['median_tokens_per_s']):.0f}/s")
            else:
                vals.append(f"{float(r['median_tokens_per_s']):.0f}/s ({float(r['ratio_vs_b1']):.2f}x)")
        lines.append(f"| {s} | {float(t):g} | " + " | ".join(vals) + " |")
    r0 = rows[0]
    lines.append("")
    lines.append(f"Total tokens/s over all rows (ratio to B = 1 of the same system); {r0['cpu']}, "
                 f"{r0['threads']} threads, torch {r0['torch']}, transformers {r0['transformers']}, "
                 f"{r0['dtype']}, commit {r0['commit']}, median of {r0['repeats']} repetitions.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                    help=f"comma-separated, of {sorted(SYSTEMS)}")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--prompts", type=int, default=8, help="held-out prompts decoded at every batch size")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=None, help="output prefix (default under benchmarks/results/)")
    ap.add_argument("--markdown", metavar="SUMMARY_CSV", help="print the README table of a summary file")
    ap.add_argument("--replot", metavar="SUMMARY_CSV", help="redraw the chart (SUMMARY_CSV minus -summary.csv"
                    " plus .png)")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if args.replot:
        chart(args.replot, args.replot.removesuffix("-summary.csv") + ".png")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
