"""Speculative decoding against what a user would otherwise run, side by side in one process.

Every system decodes the same prompts with the same target, at the same temperature and thread
count; the prompt loop is the outer one, so a change in the machine's load during the run hits every
system alike. Systems:

* ``hf``: plain Hugging Face ``generate()`` (the baseline of every speed-up);
* ``hf_assisted``: ``generate(assistant_model=drafter)`` with the same drafter as ours;
* ``hf_prompt_lookup``: ``generate(prompt_lookup_num_tokens=10)``;
* ours (:class:`specdec.SpeculativeDecoder`): ``ar``, ``sd`` (static and AdaEDL), ``specinfer``,
  ``rsd_c``, ``rsd_s`` with the drafter, ``sd_lookup`` (the drafter, and copies from the context
  where the text repeats an n-gram: ``lookup=PromptLookup(min_ngram=2)``), ``sd_v16k`` /
  ``sd_lookup_v16k`` (the same with the drafter scoring ids below 16384 only: ``draft_vocab``) and
  ``lookup`` / ``lookup_tree`` (prompt lookup, no drafter model).

One row per (system, prompt): tokens/s, wall time, and for ours tau, acceptance and the time per
round outside the models' forwards. :func:`summarize` reduces them to medians per system and the
median over prompts of the per-prompt speed-up against ``hf``; :func:`plot` charts those.
At temperature 0 every row also says whether its tokens equal ``hf``'s (in float32 they must; in
bfloat16 a different batch shape can flip a near-tie, and the texts may part there).
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from . import prompts as prompt_sets
from .decoder import SpeculativeDecoder
from .distill import encode_chat
from .prompt_lookup import PromptLookup


@dataclass(frozen=True)
class System:
    """One way to decode: ``kind`` "hf" (transformers' generate with ``hf_kwargs``) or "ours"
    (SpeculativeDecoder with ``method`` and ``kwargs``); ``drafter`` "model", "lookup", "model+lookup"
    (the model with ``lookup=PromptLookup(min_ngram=kwargs["lookup_min_ngram"])``) or None."""

    name: str
    kind: str
    method: str | None = None
    drafter: str | None = None
    kwargs: dict = field(default_factory=dict)
    hf_kwargs: dict = field(default_factory=dict)

    @property
    def shape(self) -> str:
        kw = self.kwargs
        if self.kind == "hf":
            return ",".join(f"{k}={v}" for k, v in self.hf_kwargs.items() if k != "assistant_model") or "-"
        if "gamma" in kw:
            return (
                f"gamma={kw['gamma']}"
                + (f" {kw['policy']}" if kw.get("policy", "static") != "static" else "")
                + (f" +lookup n>={kw['lookup_min_ngram']}" if "lookup_min_ngram" in kw else "")
                + (f" vocab<{kw['draft_vocab']}" if "draft_vocab" in kw else "")
                + (f" verify={kw['verify']}" if kw.get("verify", "token") != "token" else "")
            )
        if "branching" in kw:
            return "x".join(map(str, kw["branching"]))
        if "width" in kw:
            return f"W{kw['width']}L{kw['depth']}"
        return "-"


#: Every system of the full comparison (issue 16); :data:`DEMO_SYSTEMS` is the main job's short form.
SYSTEMS: tuple[System, ...] = (
    System("hf", "hf"),
    System("hf_assisted", "hf", drafter="model", hf_kwargs={"assistant_model": True}),
    System("hf_prompt_lookup", "hf", drafter="lookup", hf_kwargs={"prompt_lookup_num_tokens": 10}),
    System("ar", "ours", "ar"),
    System("sd", "ours", "sd", "model", {"gamma": 3}),
    System("sd_lookup", "ours", "sd", "model+lookup", {"gamma": 3, "lookup_min_ngram": 2}),
    System("sd_v16k", "ours", "sd", "model", {"gamma": 3, "draft_vocab": 16384}),
    System(
        "sd_lookup_v16k",
        "ours",
        "sd",
        "model+lookup",
        {"gamma": 3, "lookup_min_ngram": 2, "draft_vocab": 16384},
    ),
    System("sd_block", "ours", "sd", "model", {"gamma": 3, "verify": "block"}),
    System("sd_v16k_block", "ours", "sd", "model", {"gamma": 3, "draft_vocab": 16384, "verify": "block"}),
    System("sd_adaedl", "ours", "sd", "model", {"gamma": 6, "policy": "adaedl"}),
    System("specinfer", "ours", "specinfer", "model", {"branching": (2, 2, 1)}),
    System("rsd_c", "ours", "rsd_c", "model", {"branching": (3, 2, 1)}),
    System("rsd_s", "ours", "rsd_s", "model", {"width": 3, "depth": 3}),
    System("lookup", "ours", "sd", "lookup", {"gamma": 10}),
    System("lookup_tree", "ours", "rsd_c", "lookup", {"branching": (3, 2, 1, 1, 1, 1, 1, 1)}),
)
DEMO_SYSTEMS = ("hf", "hf_assisted", "ar", "sd_v16k", "sd_lookup_v16k", "rsd_s", "lookup")

#: What every row and summary line says about the run (machine, versions, setting).
RUN_COLUMNS = [
    "date",
    "commit",
    "cpu",
    "torch",
    "transformers",
    "dtype",
    "threads",
    "temperature",
    "prompt_set",
]
COLUMNS = [
    *RUN_COLUMNS,
    "prompt",
    "system",
    "method",
    "drafter",
    "shape",
    "new_tokens",
    "wall_s",
    "tokens_per_s",
    "speedup_vs_hf",
    "tau",
    "acceptance",
    "overhead_ms",
    "target_forward_ms",
    "rounds",
    "draft_ms_per_round",
    "target_ms_per_round",
    "verify_ms_per_round",
    "cache_ms_per_round",
    "same_as_hf",
]
SUMMARY_COLUMNS = [
    *RUN_COLUMNS,
    "system",
    "method",
    "drafter",
    "shape",
    "prompts",
    "median_tokens_per_s",
    "median_speedup_vs_hf",
    "mean_tau",
    "mean_acceptance",
    "median_overhead_ms",
    "median_target_forward_ms",
    "median_draft_ms_per_round",
    "median_target_ms_per_round",
    "median_verify_ms_per_round",
    "median_cache_ms_per_round",
    "same_as_hf",
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _system(name: str) -> System:
    for s in SYSTEMS:
        if s.name == name:
            return s
    raise ValueError(f"unknown system {name!r}; known: {[s.name for s in SYSTEMS]}")


def _hf_generate(target, drafter, system: System, ids, *, temperature, max_new_tokens, eos, seed):
    kw = dict(system.hf_kwargs)
    if kw.pop("assistant_model", False):
        kw["assistant_model"] = drafter
    sample = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    )
    torch.manual_seed(seed)
    out = target.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=eos,
        **sample,
        **kw,
    )
    return out[0, ids.shape[1] :].tolist(), None


def run(
    target,
    drafter,
    tokenizer,
    prompts: dict[str, Sequence[str]],
    *,
    systems: Iterable[str] = tuple(s.name for s in SYSTEMS),
    temperatures: Iterable[float] = (0.0, 0.7),
    threads: Iterable[int] = (1, 2),
    max_new_tokens: int = 128,
    seed: int = 0,
    log: Callable[[str], None] = print,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Decode every prompt with every system; returns one row per (threads, T, set, prompt, system)."""
    chosen = [_system(s) for s in systems]
    if not chosen or chosen[0].name != "hf":
        chosen = [_system("hf")] + [s for s in chosen if s.name != "hf"]  # the baseline runs first
    eos = tokenizer.eos_token_id
    decoders = {}
    for s in chosen:
        if s.kind == "ours":
            decoders[s.name] = _our_decoder(s, target, drafter)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "transformers": _tf_version(),
        "dtype": str(next(target.parameters()).dtype).removeprefix("torch."),
    }
    encoded = {k: [torch.tensor([encode_chat(tokenizer, p)]) for p in v] for k, v in prompts.items()}
    rows: list[dict] = []
    temperatures, threads = list(temperatures), list(threads)
    total = len(threads) * len(temperatures) * sum(map(len, encoded.values())) * len(chosen)
    done = 0
    t_start = time.perf_counter()
    before = torch.get_num_threads()
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            for temp in temperatures:
                # warm-up: first calls allocate, build caches and pick kernels
                warm = next(iter(encoded.values()))[0]
                for s in chosen:
                    _decode(s, target, drafter, decoders, warm, temp, 8, eos, seed)
                for set_name, items in encoded.items():
                    for i, ids in enumerate(items):
                        base = None
                        for s in chosen:
                            toks, stats, wall = _decode(
                                s, target, drafter, decoders, ids, temp, max_new_tokens, eos, seed + i
                            )
                            tps = len(toks) / wall if wall > 0 else 0.0
                            if s.name == "hf":
                                base = (toks, tps)
                            row = {
                                **meta,
                                "threads": nt,
                                "temperature": temp,
                                "prompt_set": set_name,
                                "prompt": i,
                                "system": s.name,
                                "method": s.method or "generate",
                                "drafter": s.drafter or "-",
                                "shape": s.shape,
                                "new_tokens": len(toks),
                                "wall_s": wall,
                                "tokens_per_s": tps,
                                "speedup_vs_hf": tps / base[1] if base and base[1] > 0 else float("nan"),
                                "tau": stats.block_efficiency if stats else float("nan"),
                                "acceptance": stats.acceptance_rate if stats else float("nan"),
                                "overhead_ms": stats.overhead_s * 1e3 if stats else float("nan"),
                                "target_forward_ms": stats.target_forward_s * 1e3 if stats else float("nan"),
                                **_round_profile(stats),
                                "same_as_hf": (toks == base[0]) if temp == 0 and base else "",
                            }
                            rows.append(row)
                            if on_row is not None:
                                on_row(row)
                            done += 1
                        el = time.perf_counter() - t_start
                        line = "  ".join(
                            f"{r['system']} {r['speedup_vs_hf']:.2f}x" for r in rows[-len(chosen) :]
                        )
                        log(
                            f"[{done}/{total}, {el / 60:.1f} min, "
                            f"~{el / done * (total - done) / 60:.1f} min left] "
                            f"threads {nt} T={temp:g} {set_name} #{i}: {line}"
                        )
    finally:
        torch.set_num_threads(before)
    return rows


def _our_decoder(s: System, target, drafter) -> SpeculativeDecoder:
    kw = dict(s.kwargs)
    if s.drafter == "model+lookup":  # the drafter model, and prompt lookup where the text repeats
        kw["lookup"] = PromptLookup(min_ngram=kw.pop("lookup_min_ngram", 1))
        return SpeculativeDecoder(target, drafter, method=s.method, **kw)
    d = PromptLookup() if s.drafter == "lookup" else (drafter if s.drafter == "model" else None)
    return SpeculativeDecoder(target, d, method=s.method, **kw)


def _round_profile(stats) -> dict:
    """Where a round's time goes (ms per round; the prefill is in the first round's target time)."""
    keys = ("draft", "target", "verify", "cache")
    if stats is None or not stats.rounds:
        return {"rounds": "", **{f"{k}_ms_per_round": float("nan") for k in keys}}
    return {
        "rounds": stats.rounds,
        **{f"{k}_ms_per_round": getattr(stats, f"{k}_s") * 1e3 / stats.rounds for k in keys},
    }


def _decode(s: System, target, drafter, decoders, ids, temp, max_new_tokens, eos, seed):
    t = time.perf_counter()
    if s.kind == "hf":
        toks, stats = _hf_generate(
            target, drafter, s, ids, temperature=temp, max_new_tokens=max_new_tokens, eos=eos, seed=seed
        )
    else:
        res = decoders[s.name].generate(
            ids, max_new_tokens=max_new_tokens, temperature=temp, seed=seed, eos_token_id=eos
        )
        toks, stats = res.sequences[0, ids.shape[1] :].tolist(), res.stats
    return toks, stats, time.perf_counter() - t


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Medians per (threads, temperature, prompt set, system), in the order the systems ran."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["threads"], r["temperature"], r["prompt_set"], r["system"]), []).append(r)

    def med(rs, k):
        v = [r[k] for r in rs if r[k] == r[k]]  # drop NaN
        return statistics.median(v) if v else float("nan")

    def mean(rs, k):
        v = [r[k] for r in rs if r[k] == r[k]]
        return sum(v) / len(v) if v else float("nan")

    out = []
    for (nt, temp, set_name, _), rs in groups.items():
        r0 = rs[0]
        same = [r["same_as_hf"] for r in rs if r["same_as_hf"] != ""]
        out.append(
            {
                **{k: r0[k] for k in ("date", "commit", "cpu", "torch", "transformers", "dtype")},
                "threads": nt,
                "temperature": temp,
                "prompt_set": set_name,
                "system": r0["system"],
                "method": r0["method"],
                "drafter": r0["drafter"],
                "shape": r0["shape"],
                "prompts": len(rs),
                "median_tokens_per_s": med(rs, "tokens_per_s"),
                "median_speedup_vs_hf": med(rs, "speedup_vs_hf"),
                "mean_tau": mean(rs, "tau"),
                "mean_acceptance": mean(rs, "acceptance"),
                "median_overhead_ms": med(rs, "overhead_ms"),
                "median_target_forward_ms": med(rs, "target_forward_ms"),
                **{
                    f"median_{k}_ms_per_round": med(rs, f"{k}_ms_per_round")
                    for k in ("draft", "target", "verify", "cache")
                },
                "same_as_hf": f"{sum(same)}/{len(same)}" if same else "",
            }
        )
    return out


def write_csv(rows: Sequence[dict], path: str, columns: Sequence[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_rows(path: str) -> list[dict]:
    """The rows of a run's CSV (as :func:`run` returns them), to summarise or chart it again."""
    ints = {"threads", "prompt", "new_tokens"}
    text = {"date", "commit", "cpu", "torch", "transformers", "dtype", "prompt_set", "system", "method",
            "drafter", "shape", "rounds"}  # fmt: skip
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k == "same_as_hf":
                r[k] = {"True": True, "False": False}.get(v, "")
            elif k in ints:
                r[k] = int(v)
            elif k not in text:
                r[k] = float(v) if v != "" else float("nan")
    return rows


def format_table(summary: Sequence[dict]) -> str:
    """An aligned text table of the summary."""
    cols = [
        ("threads", "thr", str),
        ("temperature", "T", lambda v: f"{v:g}"),
        ("prompt_set", "prompts", str),
        ("system", "system", str),
        ("shape", "shape", str),
        ("median_tokens_per_s", "tok/s", lambda v: f"{v:.1f}"),
        ("median_speedup_vs_hf", "vs hf", lambda v: f"{v:.2f}x"),
        ("mean_tau", "tau", lambda v: "-" if v != v else f"{v:.2f}"),
        ("median_overhead_ms", "overhead ms", lambda v: "-" if v != v else f"{v:.2f}"),
        ("same_as_hf", "= hf", str),
    ]
    cells = [[h for _, h, _ in cols]] + [[f(r[k]) for k, _, f in cols] for r in summary]
    widths = [max(len(c[j]) for c in cells) for j in range(len(cols))]
    lines = []
    for c in cells:
        parts = [
            v.ljust(w) if j in (2, 3, 4) else v.rjust(w)
            for j, (v, w) in enumerate(zip(c, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


_COLOURS = {
    "hf": (150, 150, 150),
    "ours-model": (70, 110, 200),
    "ours-lookup": (60, 160, 90),
    "ours-model+lookup": (40, 150, 170),
    "ours-none": (120, 120, 120),
}


def plot(summary: Sequence[dict], path: str, *, title: str) -> None:
    """Horizontal bars of the median speed-up against plain HF generate, one panel per (prompt set,
    temperature, threads); pillow only (no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font, big = ImageFont.load_default(size=13), ImageFont.load_default(size=15)
    except TypeError:  # pillow < 10.1
        font = big = ImageFont.load_default()
    keys = list(dict.fromkeys((r["prompt_set"], r["temperature"], r["threads"]) for r in summary))
    panels = [[r for r in summary if (r["prompt_set"], r["temperature"], r["threads"]) == k] for k in keys]
    row_h, bar_w, top = 19, 480, 62
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{r['system']} {r['shape']}" if r["shape"] != "-" else r["system"] for r in summary]
    left = 20 + int(max(probe.textlength(lb, font=font) for lb in labels))
    hi = max(
        2.0,
        max(
            r["median_speedup_vs_hf"]
            for r in summary
            if r["median_speedup_vs_hf"] == r["median_speedup_vs_hf"]
        ),
    )
    scale = bar_w / (int(hi) + 1)
    width = left + bar_w + 110
    height = top + sum(28 + row_h * len(p) + 22 for p in panels) + 10
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), title, font=big, fill="black")
    x = 10
    for name, col in (
        ("Hugging Face generate", _COLOURS["hf"]),
        ("ours, distilled drafter", _COLOURS["ours-model"]),
        ("ours, prompt lookup", _COLOURS["ours-lookup"]),
        ("ours, both", _COLOURS["ours-model+lookup"]),
        ("ours, target alone", _COLOURS["ours-none"]),
    ):
        d.rectangle((x, 36, x + 12, 48), fill=col)
        d.text((x + 17, 35), name, font=font, fill="black")
        x += 32 + int(d.textlength(name, font=font))
    y = top
    for (set_name, temp, nt), panel in zip(keys, panels, strict=True):
        head = f"{set_name} prompts, temperature {temp:g}, {nt} thread{'s' if nt > 1 else ''}"
        hf_tps = next((r["median_tokens_per_s"] for r in panel if r["system"] == "hf"), float("nan"))
        d.text((10, y + 5), head + f"  (HF generate: {hf_tps:.1f} tokens/s)", font=big, fill="black")
        y0 = y + 28
        y1 = y0 + row_h * len(panel)
        for k in range(int(hi) + 2):
            gx = left + int(k * scale)
            d.line((gx, y0 - 3, gx, y1), fill=(110, 110, 110) if k == 1 else (225, 225, 225), width=1)
            d.text((gx - 6, y1 + 2), f"{k}x", font=font, fill=(90, 90, 90))
        for j, r in enumerate(panel):
            ry = y0 + j * row_h
            label = f"{r['system']} {r['shape']}" if r["shape"] != "-" else r["system"]
            d.text((left - 8 - d.textlength(label, font=font), ry + 2), label, font=font, fill="black")
            v = r["median_speedup_vs_hf"]
            col = (
                _COLOURS["hf"]
                if r["method"] == "generate"
                else _COLOURS[f"ours-{'none' if r['drafter'] == '-' else r['drafter']}"]
            )
            bx = left + int((v if v == v else 0) * scale)
            d.rectangle((left, ry + 3, max(bx, left + 1), ry + row_h - 3), fill=col)
            d.text((bx + 6, ry + 2), f"{v:.2f}x", font=font, fill="black")
        y = y1 + 22
    img.save(path)


def default_prompts(n_heldout: int = 24, n_repetition: int = 24) -> dict[str, list[str]]:
    """The benchmark's sets: held-out topics of the drafter's domain, and repetition-heavy tasks."""
    return {
        "heldout": prompt_sets.heldout_prompts(n_heldout),
        "repetition": prompt_sets.repetition_prompts(n_repetition),
    }


def _commit() -> str:
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        h = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if h.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return h.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _tf_version() -> str:
    try:
        import transformers

        return transformers.__version__
    except ImportError:  # pragma: no cover
        return "none"


def load_real(target: str = "smollm2-135m", drafter: str = "smollm2-drafter", dtype: str = "bfloat16"):
    """(target, drafter, tokenizer) by name or path, offline."""
    from transformers import AutoTokenizer

    from .models import load_drafter, load_target
    from .named_models import resolve

    tpath = resolve(target)
    t = load_target(tpath, dtype=dtype)
    d = load_drafter(drafter, dtype=dtype)
    return t, d, AutoTokenizer.from_pretrained(tpath)


def run_demo(
    out_dir: str,
    *,
    heldout: int = 3,
    repetition: int = 2,
    max_new_tokens: int = 64,
    temperatures: Sequence[float] = (0.0, 0.7),
    threads: int | None = None,
    systems: Sequence[str] = DEMO_SYSTEMS,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """The main job's short comparison on SmolLM2-135M in bfloat16: writes ``real.csv`` (one row per
    generation), ``real_summary.csv`` and ``real.png`` to ``out_dir``, logs the table, returns the
    summary."""
    os.makedirs(out_dir, exist_ok=True)
    nt = threads or torch.get_num_threads()
    log(
        f"real model: smollm2-135m (bfloat16) with the distilled smollm2-drafter and prompt lookup; "
        f"{heldout} + {repetition} prompts x {max_new_tokens} new tokens, {nt} thread(s), "
        f"temperatures {', '.join(f'{t:g}' for t in temperatures)}"
    )
    t0 = time.perf_counter()
    target, drafter, tok = load_real()
    log(f"loaded in {time.perf_counter() - t0:.1f} s")
    prompts = {
        "heldout": prompt_sets.heldout_prompts(heldout),
        "repetition": prompt_sets.repetition_prompts(repetition),
    }
    rows = run(
        target,
        drafter,
        tok,
        prompts,
        systems=systems,
        temperatures=temperatures,
        threads=(nt,),
        max_new_tokens=max_new_tokens,
        log=lambda m: None,
    )
    summary = summarize(rows)
    write_csv(rows, os.path.join(out_dir, "real.csv"), COLUMNS)
    write_csv(summary, os.path.join(out_dir, "real_summary.csv"), SUMMARY_COLUMNS)
    plot(
        summary,
        os.path.join(out_dir, "real.png"),
        title=f"SmolLM2-135M, bfloat16, {nt} thread(s): median speed-up over HF generate",
    )
    log(format_table(summary))
    log(f"wrote {out_dir}/real.csv, real_summary.csv, real.png ({(time.perf_counter() - t0) / 60:.1f} min)")
    return summary


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use benchmarks/real_model_speed.py or `specdec demo`")
