"""Time the README's two set-up commands from a fresh clone, exactly as the README prints them.

    python benchmarks/install_times.py main            # the main job: install, then `specdec demo`
    python benchmarks/install_times.py test            # the test command (what .ci/run runs)
    python benchmarks/install_times.py main --env SPECDEC_CUDA=1 --install-only   # the CUDA variant

Each run clones HEAD of this checkout into a new temporary folder (nothing of this checkout's venv or
build is reused), reads the command from README.md there, and runs it with ``bash -c``: first the
install part (everything before ``specdec demo`` or the first ``python -m pytest``), then the rest
(for the tests: the pytest run in the test venv, then the one in the vLLM venv), each timed. One
row per run is appended to ``benchmarks/results/install-times-<machine>-<date>-<commit>.csv`` with
the venv's size and what setup.py built (``specdec_kernels._build_info``). Needs a clean HEAD (the
clone takes committed files only) and a quiet machine (these are wall-clock times).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from record import git_commit, slug  # noqa: E402

COLUMNS = ["date", "commit", "machine", "cores", "command", "env", "install_s", "run_s", "exit_status",
           "venv_mb", "torch", "built", "last_part"]  # fmt: skip

#: How each command is recognised among the README's indented command lines.
COMMANDS = {"main": r"specdec demo\s*$", "test": r"python -m pytest .*$"}


def readme_command(readme: str, which: str) -> str:
    """The one command line of README.md that starts a venv and ends as COMMANDS[which] says."""
    hits = [ln.strip() for ln in readme.splitlines()
            if ln.startswith("    python3 -m venv .venv") and re.search(COMMANDS[which], ln)]  # fmt: skip
    if len(hits) != 1:
        raise SystemExit(f"README.md: expected one {which} command line, found {len(hits)}")
    return hits[0]


def split_command(command: str) -> tuple[str, str]:
    """(install part, run part): the run part starts at ``specdec demo`` or at the first ``python -m
    pytest`` (the test command runs a second pytest, in the vLLM venv, after the first)."""
    parts = command.split(" && ")
    start = next((i for i, p in enumerate(parts) if p.startswith(("python -m pytest", "specdec demo"))), None)
    if start is None or start == 0:
        raise SystemExit(f"cannot tell the install part from the run part of: {command}")
    return " && ".join(parts[:start]), " && ".join(parts[start:])


def machine() -> str:
    # Not specdec.compare.cpu_name: this script runs before the package (and torch) is installed.
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    return cpu.strip()


def _du_mb(path: str) -> float:
    out = subprocess.run(["du", "-sm", path], capture_output=True, text=True)
    return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else float("nan")


def _built(clone: str) -> tuple[str, str]:
    py = os.path.join(clone, ".venv", "bin", "python")
    code = ("import torch; from specdec_kernels import _backend; "
            "print(torch.__version__); print(_backend.cpp_status()[2])")  # fmt: skip
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=clone)
    lines = r.stdout.strip().splitlines()
    return (lines[0], lines[1]) if len(lines) == 2 else ("?", (r.stderr.strip().splitlines() or ["?"])[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=sorted(COMMANDS))
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the command (e.g. SPECDEC_CUDA=1)")
    ap.add_argument("--install-only", action="store_true", help="time the install part only")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    env = dict(os.environ)
    for kv in args.env:
        if "=" not in kv:
            ap.error(f"--env wants KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        env[k] = v
    env.pop("VIRTUAL_ENV", None)  # the command makes and activates its own
    if git_commit(ROOT).endswith("-dirty"):
        print("warning: the checkout has uncommitted changes; the clone times HEAD without them",
              file=sys.stderr)

    tmp = tempfile.mkdtemp(prefix="install-times-")
    clone = os.path.join(tmp, "specdec_kernels")
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    commit = git_commit(clone)  # what was timed: HEAD, clean
    with open(os.path.join(clone, "README.md"), encoding="utf-8") as f:
        command = readme_command(f.read(), args.which)
    install, last = split_command(command)
    print(f"clone: {clone}\ncommand: {command}", flush=True)

    transcript: list[str] = []

    def run(part: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["bash", "-c", part], cwd=clone, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:  # shown as it comes, and kept for the results folder
            print(line, end="", flush=True)
            transcript.append(line)
        return time.perf_counter() - t0, proc.wait()

    install_s, rc = run(install)
    run_s = float("nan")
    if rc == 0 and not args.install_only:
        run_s, rc = run(". .venv/bin/activate && " + last)
    torch_v, built = _built(clone)
    row = {
        "date": time.strftime("%Y-%m-%d"), "commit": commit, "machine": machine(),
        "cores": os.cpu_count(), "command": args.which, "env": " ".join(args.env),
        "install_s": f"{install_s:.0f}", "run_s": "" if run_s != run_s else f"{run_s:.0f}",
        "exit_status": rc, "venv_mb": f"{_du_mb(os.path.join(clone, '.venv')):.0f}", "torch": torch_v,
        "built": built, "last_part": "" if args.install_only else last,
    }  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    tag = f"{slug(' '.join(machine().split()[:2]))}-{os.cpu_count()}-cpus"
    path = os.path.join(args.out, f"install-times-{tag}-{row['date']}-{commit}.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    # what the run printed, and (main job) the demo's summaries, next to the times
    stem = path[: -len(".csv")] + f"-{args.which}" + ("-" + slug(" ".join(args.env)) if args.env else "")
    with open(stem + ".log", "w", encoding="utf-8") as f:
        f.write(f"$ {command}\n" + "".join(transcript))
    for name in ("real_summary.csv", "demo.csv"):
        src = os.path.join(clone, "specdec_demo", name)
        if os.path.isfile(src):
            shutil.copy(src, f"{stem}-{name}")
    print(row, f"\nappended to {path}; output in {stem}.log", sep="\n")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
