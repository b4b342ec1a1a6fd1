"""Turn a pytest-benchmark JSON into a results CSV, and a results CSV into a markdown table.

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/record.py bench.json            # -> benchmarks/results/<device>-<date>-<commit>.csv
    python benchmarks/record.py --markdown benchmarks/results/X.csv   # the tables of docs/benchmarks.md

Times are per op call: CUDA-graph benchmarks time ``calls_per_round`` calls per round (see
benchmarks/conftest.py), so their median and IQR are divided by it here. ``gbps`` is the bytes
the call must move divided by that median; ``copy_gbps`` is the device-to-device copy bandwidth
measured in the same run on the same device; ``speedup_vs_reference`` compares with the
reference backend at the same op, device, shape and dtype in the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = [
    "date", "commit", "device", "torch", "triton", "cuda", "op", "backend", "B", "K", "V", "dtype",
    "median_us", "iqr_us", "bytes", "gbps", "copy_gbps", "speedup_vs_reference", "peak_bytes",
]
_BACKEND_ORDER = {"reference": 0, "cpu": 1, "triton": 2, "cuda": 3, "torch": 4}


def git_commit(cwd: str = HERE) -> str:
    """Short HEAD hash ("-dirty" when tracked files changed), or "unknown" outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _fmt(x: float | None, nd: int) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _json_commit(data: dict[str, Any]) -> str:
    info = data.get("machine_info", {}).get("specdec", {})
    commit = info.get("commit")
    if commit:
        return commit + ("-dirty" if info.get("dirty") else "")
    return git_commit()  # written outside a git checkout: ask the checkout record.py runs in


def rows_from_json(data: dict[str, Any], commit: str | None = None) -> list[dict[str, str]]:
    """One CSV row per timed benchmark of ``data`` (a pytest-benchmark JSON). ``commit``
    overrides the one recorded in the JSON (e.g. a run on a machine without the git checkout)."""
    info = data.get("machine_info", {}).get("specdec", {})
    commit = commit or _json_commit(data)
    date = str(data.get("datetime", ""))[:10] or "unknown"
    timed = []
    for b in data.get("benchmarks", []):
        ex, st = b.get("extra_info", {}), b.get("stats")
        if not st or "op" not in ex:
            continue
        calls = int(ex.get("calls_per_round", 1))
        median_s = st["median"] / calls
        timed.append((ex, median_s, st["iqr"] / calls))
    if not timed:
        return []

    def key(ex: dict[str, Any]) -> tuple:
        return ex["op"], ex["device"], ex["B"], ex["K"], ex["V"], ex["dtype"]

    ref = {key(ex): m for ex, m, _ in timed if ex["backend"] == "reference"}
    copy = {ex["device"]: ex["bytes"] / m / 1e9 for ex, m, _ in timed if ex["op"] == "copy"}
    rows = []
    for ex, m, iqr in timed:
        is_copy = ex["op"] == "copy"
        r = ref.get(key(ex))
        rows.append({
            "date": date,
            "commit": commit,
            "device": ex["device"],
            "torch": info.get("torch") or "unknown",
            "triton": info.get("triton") or "none",
            "cuda": info.get("cuda") or "none",
            "op": ex["op"],
            "backend": ex["backend"],
            "B": "" if is_copy else str(ex["B"]),
            "K": "" if is_copy else str(ex["K"]),
            "V": "" if is_copy else str(ex["V"]),
            "dtype": ex["dtype"],
            "median_us": _fmt(m * 1e6, 3),
            "iqr_us": _fmt(iqr * 1e6, 3),
            "bytes": str(ex["bytes"]),
            "gbps": _fmt(ex["bytes"] / m / 1e9, 3),
            "copy_gbps": _fmt(copy.get(ex["device"]), 3),
            "speedup_vs_reference": _fmt(r / m if r is not None else None, 2),
            # memory high-water mark of one call beyond its inputs, where the benchmark measures it
            "peak_bytes": str(ex["peak_bytes"]) if ex.get("peak_bytes") is not None else "",
        })

    def order(row: dict[str, str]) -> tuple:
        num = [int(row[c]) if row[c] else 0 for c in ("B", "K", "V")]
        base, _, variant = row["op"].rstrip("]").partition("[")  # "op[variant]": plain op first
        return (row["op"] == "copy", row["device"], base, variant, row["dtype"], *num,
                _BACKEND_ORDER.get(row["backend"], 9))

    return sorted(rows, key=order)


DECODER_COLUMNS = [
    "date", "commit", "device", "torch", "transformers", "case", "method", "temperature", "new_tokens",
    "tau", "acceptance_rate", "mbsu", "param_ratio", "rounds", "target_calls", "median_ms", "tokens_per_s",
    "speedup_vs_ar",
]


def decoder_rows_from_json(data: dict[str, Any], commit: str) -> list[dict[str, str]]:
    """One row per timed end-to-end decoder benchmark (benchmarks/test_bench_decoder.py): tau and
    tokens/s per method, and the speed-up over "ar" at the same temperature in the same run."""
    info = data.get("machine_info", {}).get("specdec", {})
    date = str(data.get("datetime", ""))[:10] or "unknown"
    rows = []
    for b in data.get("benchmarks", []):
        ex, st = b.get("extra_info", {}), b.get("stats")
        if not st or "tau" not in ex or "method" not in ex:
            continue
        rows.append({
            "date": date, "commit": commit, "device": ex.get("device", "unknown"),
            "torch": info.get("torch") or "unknown", "transformers": info.get("transformers") or "unknown",
            "case": ex.get("case", ex["method"]), "method": ex["method"],
            "temperature": str(ex["temperature"]),
            "new_tokens": str(ex["new_tokens"]), "tau": _fmt(ex["tau"], 3),
            "acceptance_rate": _fmt(ex["acceptance_rate"], 3), "mbsu": _fmt(ex["mbsu"], 3),
            "param_ratio": _fmt(ex["param_ratio"], 4), "rounds": str(ex["rounds"]),
            "target_calls": str(ex["target_calls"]), "median_ms": _fmt(st["median"] * 1e3, 3),
            "tokens_per_s": _fmt(ex["new_tokens"] / st["median"], 1), "speedup_vs_ar": "",
        })
    ar = {r["temperature"]: float(r["median_ms"]) for r in rows if r["method"] == "ar"}
    for r in rows:
        if r["temperature"] in ar:
            r["speedup_vs_ar"] = _fmt(ar[r["temperature"]] / float(r["median_ms"]), 2)
    return rows


def _write(path: str, columns: list[str], rows: list[dict[str, str]]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def record(json_path: str, out_dir: str, commit: str | None = None) -> list[str]:
    """Write the CSVs of a pytest-benchmark JSON under ``out_dir``: the ops' CSV (last) and, when the
    run timed the decoder, ``decoder-<device>-<date>-<commit>.csv``. Returns their paths."""
    with open(json_path) as f:
        data = json.load(f)
    rows = rows_from_json(data, commit)
    dec = decoder_rows_from_json(data, commit or _json_commit(data))
    if not rows and not dec:
        raise SystemExit("no timed benchmarks in this JSON (was it written with --benchmark-disable?)")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if dec:
        name = f"decoder-{slug(dec[0]['device'])}-{dec[0]['date']}-{dec[0]['commit']}.csv"
        paths.append(_write(os.path.join(out_dir, name), DECODER_COLUMNS, dec))
    if not rows:
        return paths
    info = data.get("machine_info", {}).get("specdec", {})
    load = info.get("loadavg_start"), info.get("loadavg_end")
    if all(load):
        print(f"note: 1-min load average {load[0][0]:.2f} at the start, {load[1][0]:.2f} at the end "
              f"of the run", file=sys.stderr)
    device = info.get("device") or rows[0]["device"]
    name = f"{slug(device)}-{rows[0]['date']}-{rows[0]['commit']}.csv"
    paths.append(_write(os.path.join(out_dir, name), COLUMNS, rows))
    return paths


def _num(s: str, nd: int) -> str:
    if not s:
        return ""
    x = float(s)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{nd}f}"


def read_rows(csv_path: str) -> list[dict[str, str]]:
    """The rows of a results CSV; exits with a message when it has none."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{csv_path}: no rows")
    return rows


def markdown(csv_path: str) -> str:
    """A compact markdown table of a results CSV (columns that are constant go in the caption)."""
    rows = read_rows(csv_path)
    first = rows[0]
    devices = sorted({r["device"] for r in rows})
    dtypes = sorted({r["dtype"] for r in rows if r["op"] != "copy"})
    caption = (f"{', '.join(devices)} · torch {first['torch']} · triton {first['triton']} · "
               f"CUDA {first['cuda']} · commit {first['commit']} · {first['date']}"
               + (f" · {dtypes[0]}" if len(dtypes) == 1 else ""))
    cols = (["device"] if len(devices) > 1 else []) + ["op", "B", "K", "V"]
    cols += ["dtype"] if len(dtypes) > 1 else []
    cols += ["backend", "median µs", "IQR µs", "GB/s", "% of copy", "vs reference"]
    out = [f"_{caption}_", "", "| " + " | ".join(cols) + " |",
           "|" + "|".join("---:" if c in ("B", "K", "V") or "µs" in c or "GB" in c or "%" in c
                          or c == "vs reference" else "---" for c in cols) + "|"]
    for r in rows:
        pct = (f"{100 * float(r['gbps']) / float(r['copy_gbps']):.0f}%"
               if r["gbps"] and r["copy_gbps"] else "")
        speed = f"{float(r['speedup_vs_reference']):.1f}×" if r["speedup_vs_reference"] else ""
        if r["backend"] == "reference":
            speed = "1×"
        cells = {
            "device": r["device"], "op": f"`{r['op']}`", "B": r["B"], "K": r["K"], "V": r["V"],
            "dtype": r["dtype"], "backend": r["backend"], "median µs": _num(r["median_us"], 1),
            "IQR µs": _num(r["iqr_us"], 1), "GB/s": _num(r["gbps"], 2), "% of copy": pct,
            "vs reference": speed,
        }
        out.append("| " + " | ".join(cells[c] for c in cols) + " |")
    return "\n".join(out)


def record_lab_demo(demo_csv: str, out_dir: str, device: str, commit: str | None = None) -> str:
    """Copy a ``specdec demo`` CSV under ``out_dir`` as ``lab-demo-<device>-<date>-<commit>.csv``
    with the run's date, commit, device and library versions in front of every row."""
    import datetime

    import torch
    import transformers

    with open(demo_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        demo_rows, demo_cols = list(reader), list(reader.fieldnames or [])
    if not demo_rows:
        raise SystemExit(f"{demo_csv}: no rows")
    meta = {"date": datetime.date.today().isoformat(), "commit": commit or git_commit(), "device": device,
            "torch": torch.__version__, "transformers": transformers.__version__}
    rows = [{**meta, **r} for r in demo_rows]
    os.makedirs(out_dir, exist_ok=True)
    name = f"lab-demo-{slug(device)}-{meta['date']}-{meta['commit']}.csv"
    path = os.path.join(out_dir, name)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=[*meta, *demo_cols])
        w.writeheader()
        w.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", help="pytest-benchmark JSON (--benchmark-json) to record")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where the CSV goes")
    ap.add_argument("--commit", help="commit to record when the JSON has none or a wrong one (default: "
                    "the JSON's, else `git rev-parse` here, else 'unknown')")
    ap.add_argument("--markdown", metavar="CSV", help="print a results CSV as a markdown table")
    ap.add_argument("--lab-demo", metavar="CSV", help="record a `specdec demo` CSV (with --device)")
    ap.add_argument("--device", help="with --lab-demo: the machine, e.g. 'AMD EPYC (1 thread)'")
    args = ap.parse_args(argv)
    if args.lab_demo:
        if not args.device:
            ap.error("--lab-demo needs --device")
        print(record_lab_demo(args.lab_demo, args.out_dir, args.device, args.commit))
        return 0
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if not args.json:
        ap.error("give a pytest-benchmark JSON, or --markdown CSV")
    for path in record(args.json, args.out_dir, args.commit):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
