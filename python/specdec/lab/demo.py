"""``specdec demo``: every decoding method of the package on the miniature lab, in about a minute on CPU.

The lab's target (a tiny LLaVA) answers a fixed set of held-out scene prompts with each method (ar;
sd with gamma 3 and 5, static and AdaEDL lengths; SpecInfer 2x2; RSD-C 2-2 and 2-2-2; RSD-S W3L2 and
W4L3), each speculative one with the text-only drafter and with the compact image drafter, at
temperatures 0 and 0.7. Per configuration it reports the block efficiency tau (tokens per target
forward), the acceptance rate, the memory-bound speed-up MBSU and the measured tokens/s, and writes
``demo.csv``, a bar chart ``demo.png`` and the showcase prompt's image ``scene.png``.

Threads: :func:`run_demo` leaves torch's thread count to the caller. These batch-1 forwards of tiny
models are fastest on ONE intra-op thread (OpenMP workers only add synchronisation, badly so on a busy
machine), which is what ``specdec demo`` sets unless ``--threads N`` is given.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..decoder import SpeculativeDecoder
from . import models as lab_models
from . import scenes

#: Prompt count of the default run: ~75 % "describe" prompts (see :func:`prompt_set`). Measured on 2
#: CPU cores at 1 thread with trained weights (answers ~15 tokens), the 38-run grid costs ~3 s per
#: prompt plus ~4 s of imports and loading: `specdec demo` took 42 s with 12 prompts (54 s with 16),
#: leaving room for a busy machine under the 2-minute budget.
DEFAULT_PROMPTS = 12
#: Seed of the prompt set: away from the training seeds (0.., 500_000.., 7_000_000.., 9_000_000..) so
#: the scenes are held out in spirit (the scene space is small, so some repeat by chance).
PROMPT_SEED = 31_337_000
#: CSV columns, in order (draft_depth / param_ratio / wall_s let MBSU and tokens/s be recomputed).
#: ``speedup`` is tokens/s over ar's at the same temperature (measured, unlike tau and MBSU, which
#: count forwards); a value that does not apply (ar's acceptance, a speed-up without an ar row) is
#: None in the rows and "n/a" in the CSV and the table.
COLUMNS = (
    "method", "shape", "drafter", "policy", "verify", "temperature", "tau", "mbsu", "acceptance_rate",
    "tokens_per_s", "speedup", "new_tokens", "rounds", "prompts", "draft_depth", "param_ratio", "wall_s",
)  # fmt: skip
NOT_APPLICABLE = "n/a"
#: Text drafter used when the weights dir has no metrics.json naming the TVD++ variant that won.
FALLBACK_TEXT_DRAFTER = "tvdpp_vocab"


@dataclass(frozen=True)
class DemoConfig:
    """One decoder configuration of the grid (the temperature is crossed separately).

    drafter: "text" (the TVD++ text-only drafter), "image" (the compact LLaVA drafter) or None ("ar").
    """

    method: str
    drafter: str | None = None
    policy: str = "static"
    gamma: int | None = None
    branching: tuple[int, ...] | None = None
    width: int | None = None
    depth: int | None = None
    verify: str = "token"  # the chain rule of "sd" (SpeculativeDecoder's verify=)

    @property
    def shape(self) -> str:
        """'γ=3', '2x2' (SpecInfer), '2-2-2' (RSD-C), 'W3L2' (RSD-S), '-' (ar)."""
        if self.method == "sd":
            return f"γ={self.gamma}"
        if self.method == "specinfer":
            return "x".join(map(str, self.branching or ()))
        if self.method == "rsd_c":
            return "-".join(map(str, self.branching or ()))
        if self.method == "rsd_s":
            return f"W{self.width}L{self.depth}"
        return "-"

    @property
    def label(self) -> str:
        """e.g. 'sd γ=5 adaedl / image', 'rsd_s W4L3 / text', 'ar'."""
        if self.method == "ar":
            return "ar"
        policy = f" {self.policy}" if self.method == "sd" else ""
        rule = f" verify={self.verify}" if self.verify != "token" else ""
        return f"{self.method} {self.shape}{policy}{rule} / {self.drafter}"

    def decoder_kwargs(self) -> dict:
        kw: dict = {"method": self.method}
        if self.method == "sd":
            kw.update(gamma=self.gamma, policy=self.policy, verify=self.verify)
        elif self.method in ("specinfer", "rsd_c"):
            kw["branching"] = self.branching
        elif self.method == "rsd_s":
            kw.update(width=self.width, depth=self.depth)
        return kw


def grid(drafters: Sequence[str] = ("text", "image")) -> list[DemoConfig]:
    """ar, then each speculative shape with each drafter side by side (text before image)."""
    shapes = [
        {"method": "sd", "gamma": 3, "policy": "static"},
        {"method": "sd", "gamma": 3, "policy": "adaedl"},
        {"method": "sd", "gamma": 5, "policy": "static"},
        {"method": "sd", "gamma": 5, "policy": "adaedl"},
        {"method": "specinfer", "branching": (2, 2)},
        {"method": "rsd_c", "branching": (2, 2)},
        {"method": "rsd_c", "branching": (2, 2, 2)},
        {"method": "rsd_s", "width": 3, "depth": 2},
        {"method": "rsd_s", "width": 4, "depth": 3},
    ]
    return [DemoConfig("ar")] + [DemoConfig(drafter=d, **s) for s in shapes for d in drafters]


#: The default grid: 19 configurations (ar + 9 draft shapes x 2 drafters), run at each temperature
#: (38 runs per prompt).
CONFIGS: tuple[DemoConfig, ...] = tuple(grid())
TEMPERATURES = (0.0, 0.7)


def prompt_set(n: int) -> list[scenes.Example]:
    """``n`` fixed prompts: every 4th (index 3, 7, ...) is a short-answer task (count, colour, where,
    exists), the rest ask "describe the image", whose long captions (10-30 tokens) are where drafting
    pays off; a mix shows the short answers too. Prompt 0 is always a "describe" (the showcase). The
    set for ``n`` is a prefix of the set for ``n + 1``."""
    describe = scenes.examples(PROMPT_SEED, n, tasks=["describe"])
    other = scenes.examples(PROMPT_SEED + 1, n, tasks=[t for t in scenes.TASKS if t != "describe"])
    return [other[i] if i % 4 == 3 else describe[i] for i in range(n)]


def text_drafter_name(weights: str) -> str:
    """The text-only drafter to demo: metrics.json's ``image_loss_kind`` (the TVD++ variant that won)."""
    try:
        with open(os.path.join(weights, "metrics.json")) as f:
            name = json.load(f).get("image_loss_kind")
    except (OSError, ValueError):
        return FALLBACK_TEXT_DRAFTER
    return name if name in lab_models.DRAFTERS and name != "image" else FALLBACK_TEXT_DRAFTER


class _Totals:
    """Per-config sums over the prompts: the pooled ratios equal what GenerationStats would report for
    all the prompts' rounds run back to back."""

    def __init__(self) -> None:
        self.rounds = self.emitted = self.accepted = self.new_tokens = 0
        self.depth_sum = 0.0
        self.wall_s = 0.0
        self.param_ratio = 0.0

    def add(self, s) -> None:
        self.rounds += s.rounds
        # tau counts the tokens each round emitted before the max_new_tokens / EOS cut
        self.emitted += sum(s.emitted_per_round)
        self.accepted += s.accepted
        self.depth_sum += s.draft_depth * s.rounds
        self.new_tokens += s.new_tokens
        self.wall_s += s.wall_s
        self.param_ratio = s.param_ratio

    def row(self, cfg: DemoConfig, temperature: float, prompts: int) -> dict:
        tau = self.emitted / max(self.rounds, 1)
        depth = self.depth_sum / max(self.rounds, 1)
        return {
            "method": cfg.method,
            "shape": cfg.shape,
            "drafter": cfg.drafter or "-",
            "policy": cfg.policy if cfg.method == "sd" else "-",
            "verify": cfg.verify,
            "temperature": float(temperature),
            "tau": tau,
            "mbsu": tau / (self.param_ratio * depth + 1),
            "acceptance_rate": None if cfg.method == "ar" else (
                self.accepted / self.depth_sum if self.depth_sum else 0.0),
            "tokens_per_s": self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0,
            "speedup": None,  # set by add_speedups once every row of the temperature is in
            "new_tokens": self.new_tokens,
            "rounds": self.rounds,
            "prompts": prompts,
            "draft_depth": depth,
            "param_ratio": self.param_ratio,
            "wall_s": self.wall_s,
        }


def add_speedups(rows: Sequence[dict]) -> None:
    """Set each row's ``speedup``: its tokens/s over the ar row's at the same temperature (None
    without one)."""
    ar = {r["temperature"]: r["tokens_per_s"] for r in rows if r["method"] == "ar"}
    for r in rows:
        base = ar.get(r["temperature"])
        r["speedup"] = r["tokens_per_s"] / base if base else None


def _progress(enabled: bool | None, total: int):
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return None
    return tqdm(total=total, unit="gen", desc="demo", file=sys.stderr, leave=False, dynamic_ncols=True)


def run_demo(
    weights: str | None = None,
    out_dir: str = "specdec_demo",
    *,
    prompts: int = DEFAULT_PROMPTS,
    max_new_tokens: int = 48,
    temperatures: Iterable[float] = TEMPERATURES,
    seed: int = 0,
    progress: bool | None = None,
    configs: Sequence[DemoConfig] | None = None,
    log: Callable[..., object] = print,
) -> list[dict]:
    """Run ``configs`` (default :data:`CONFIGS`) x ``temperatures`` over :func:`prompt_set`
    (``prompts``), write demo.csv / demo.png / scene.png to ``out_dir``, log a table and the showcase
    caption, and return one row per run (keys :data:`COLUMNS`).

    Prompt i samples with seed ``seed + i``. Rows pool the prompts' rounds: tau = emitted tokens /
    rounds, acceptance = accepted / drafted depth, gamma = drafted depth / rounds, MBSU =
    tau / (c * gamma + 1), tokens/s = new tokens / wall seconds. Weights load from ``weights``
    (default: the package's, :func:`specdec.lab.models.weights_dir`); FileNotFoundError if missing.
    Threads are left as they are (1 is fastest here, see the module doc).
    """
    weights = weights or lab_models.weights_dir()
    configs = list(CONFIGS if configs is None else configs)
    temperatures = [float(t) for t in temperatures]
    if not configs or not temperatures:
        raise ValueError("configs and temperatures must not be empty")
    if prompts < 1 or max_new_tokens < 1:
        raise ValueError(f"prompts and max_new_tokens must be >= 1, got {prompts} and {max_new_tokens}")
    for c in configs:
        if (c.method == "ar") != (c.drafter is None) or c.drafter not in (None, "text", "image"):
            raise ValueError(f"config {c}: drafter must be 'text' or 'image' (None only for 'ar')")

    t_start = time.perf_counter()
    target = lab_models.load("target", path=weights)
    text_name = text_drafter_name(weights)
    names = {"text": text_name, "image": "image"}
    drafters = {
        d: lab_models.load(names[d], path=weights)
        for d in ("text", "image")
        if any(c.drafter == d for c in configs)
    }
    t_load = time.perf_counter() - t_start

    exs = prompt_set(prompts)
    inputs = [
        (torch.tensor([scenes.prompt_ids(e.question)]), scenes.pixel_values([scenes.render(e.scene)]))
        for e in exs
    ]
    decoders = [SpeculativeDecoder(target, drafters.get(c.drafter), **c.decoder_kwargs()) for c in configs]
    # one short untimed run per decoder kind, so one-time setup (lazy inits, first allocations) does not
    # land in the first configuration's tokens/s
    seen = set()
    for dec, c in zip(decoders, configs, strict=True):
        kind = (c.drafter, c.method == "sd")
        if kind not in seen:
            seen.add(kind)
            dec.generate(inputs[0][0], pixel_values=inputs[0][1], max_new_tokens=4, seed=0)

    bar = _progress(progress, len(temperatures) * len(configs) * len(exs))
    rows, showcase, greedy_tau = [], {}, {}
    try:
        for temp in temperatures:
            for dec, c in zip(decoders, configs, strict=True):
                totals = _Totals()
                for i, (ids, pix) in enumerate(inputs):
                    res = dec.generate(
                        ids,
                        pixel_values=pix,
                        max_new_tokens=max_new_tokens,
                        temperature=temp,
                        seed=seed + i,
                        eos_token_id=scenes.EOS_ID,
                    )
                    totals.add(res.stats)
                    if i == 0 and temp == 0.0:
                        showcase[c] = res.sequences[0, ids.shape[1] :].tolist()
                    if bar is not None:
                        bar.update(1)
                rows.append(totals.row(c, temp, len(exs)))
                if temp == 0.0:
                    greedy_tau[c] = rows[-1]["tau"]
    finally:
        if bar is not None:
            bar.close()
    if not showcase:  # no greedy run in the grid: one greedy run of the first configuration
        ids, pix = inputs[0]
        res = decoders[0].generate(
            ids, pixel_values=pix, max_new_tokens=max_new_tokens, eos_token_id=scenes.EOS_ID
        )
        showcase[configs[0]] = res.sequences[0, ids.shape[1] :].tolist()

    add_speedups(rows)
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        k: os.path.join(out_dir, f)
        for k, f in (("csv", "demo.csv"), ("plot", "demo.png"), ("scene", "scene.png"))
    }
    write_csv(rows, paths["csv"])
    title = f"specdec demo: {len(exs)} prompts, <= {max_new_tokens} new tokens, text drafter = {text_name}"
    plot(rows, paths["plot"], title=title)
    from PIL import Image

    Image.fromarray(scenes.render(exs[0].scene)).resize((144, 144), Image.NEAREST).save(paths["scene"])

    n_desc = sum(e.question.startswith("describe") for e in exs)
    log(
        f"weights {weights} (text drafter: {text_name}); {len(exs)} prompts ({n_desc} describe), "
        f"max_new_tokens {max_new_tokens}, seeds {seed}..{seed + len(exs) - 1}, torch threads "
        f"{torch.get_num_threads()}"
    )
    log("")
    log(format_table(rows))
    log("")
    _log_showcase(log, exs[0], showcase, greedy_tau)
    log("")
    log(
        f"wrote {paths['csv']}, {paths['plot']}, {paths['scene']} "
        f"({time.perf_counter() - t_start:.1f} s, {t_load:.1f} s of it loading)"
    )
    return rows


def _log_showcase(log: Callable, ex: scenes.Example, outputs: dict, greedy_tau: dict) -> None:
    """The ground truth next to the greedy output of the speculative config with the highest tau (every
    greedy output is the target's greedy decoding, so they should agree: say so, or where they do not)."""
    tok = scenes.Tokenizer()
    spec = [c for c in outputs if c.method != "ar"] or list(outputs)
    best = max(spec, key=lambda c: greedy_tau.get(c, 0.0))
    text = tok.decode(outputs[best])
    differ = [c.label for c in outputs if outputs[c] != outputs[best]]
    log(f"scene.png, prompt: {ex.question}")
    log(f"  ground truth : {ex.answer}")
    verdict = "matches the ground truth" if text == ex.answer else "differs from the ground truth"
    log(f"  {best.label}, greedy: {text}  ({verdict})")
    if len(outputs) > 1:
        same = "identical" if not differ else "differ in " + ", ".join(differ)
        log(f"  greedy outputs of the other configs: {same}")


def write_csv(rows: Sequence[dict], path: str) -> None:
    """One line per row, columns :data:`COLUMNS` (floats to 6 significant digits)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else NOT_APPLICABLE if v is None else v)
                        for k, v in r.items()})


def format_table(rows: Sequence[dict]) -> str:
    """An aligned text table: text columns left-aligned, numbers right-aligned."""
    cols = [
        ("method", "method", str), ("shape", "shape", str), ("drafter", "drafter", str),
        ("policy", "policy", str), ("temperature", "T", lambda v: f"{v:g}"),
        ("tau", "tau", lambda v: f"{v:.3f}"),
        ("acceptance_rate", "accept", lambda v: f"{v:.3f}"), ("mbsu", "mbsu", lambda v: f"{v:.3f}"),
        ("tokens_per_s", "tok/s", lambda v: f"{v:.0f}"), ("speedup", "vs ar", lambda v: f"{v:.2f}x"),
        ("new_tokens", "tokens", str), ("rounds", "rounds", str),
    ]  # fmt: skip
    cells = [[h for _, h, _ in cols]] + [
        [NOT_APPLICABLE if r.get(k) is None else f(r[k]) for k, _, f in cols] for r in rows
    ]
    widths = [max(len(c[j]) for c in cells) for j in range(len(cols))]
    lines = []
    for c in cells:
        parts = [v.ljust(w) if j < 4 else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


_COLOURS = {"text": (70, 110, 200), "image": (230, 140, 40), "-": (140, 140, 140)}


def plot(rows: Sequence[dict], path: str, *, title: str = "specdec demo") -> None:
    """Per temperature, two bar panels side by side, coloured by drafter (pillow only): tau (tokens per
    target forward, with MBSU) and the measured speed-up in tokens/s over ar. Both are shown because
    they disagree: tau counts forwards, and on these tiny models a drafter forward costs nearly what a
    target forward does, so a tau of 3 can still be slower than plain decoding.

    Labels are ASCII: pillow's built-in font has no Greek letters."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font, big = ImageFont.load_default(size=13), ImageFont.load_default(size=16)
    except TypeError:  # pillow < 10.1: one fixed-size bitmap font
        font = big = ImageFont.load_default()
    temps = sorted({r["temperature"] for r in rows})
    panels = [[r for r in rows if r["temperature"] == t] for t in temps]
    row_h, left, tau_w, gap, sp_w, top = 20, 250, 360, 120, 260, 88
    sp_left = left + tau_w + gap
    width = sp_left + sp_w + 90
    height = top + sum(30 + row_h * len(p) + 15 for p in panels) + 25
    tau_max = max(2.0, max(r["tau"] for r in rows))
    tau_scale = tau_w / (int(tau_max) + 1)
    speedups = [r["speedup"] for r in rows if r.get("speedup") is not None]
    sp_max = max([1.5] + speedups)
    sp_step = 0.5 if sp_max <= 3 else 1.0
    sp_ticks = int(sp_max / sp_step) + 1
    sp_scale = sp_w / (sp_ticks * sp_step)

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), title, font=big, fill="black")
    d.text((10, 32), "left: tau = tokens per target forward (after a bar: tau, MBSU); right: measured "
           "speed-up, tokens/s over ar (1.0 = plain decoding)", font=font, fill=(60, 60, 60))
    x = left
    for name, col in (
        ("text-only drafter", _COLOURS["text"]),
        ("image drafter", _COLOURS["image"]),
        ("target alone (ar)", _COLOURS["-"]),
    ):
        d.rectangle((x, 54, x + 12, 66), fill=col)
        d.text((x + 17, 53), name, font=font, fill="black")
        x += 30 + int(d.textlength(name, font=font))
    y = top
    for t, panel in zip(temps, panels, strict=True):
        d.text((10, y + 6), f"temperature {t:g}" + (" (greedy)" if t == 0 else ""), font=big, fill="black")
        d.text((left, y + 8), "tau (block efficiency)", font=font, fill=(60, 60, 60))
        d.text((sp_left, y + 8), "speed-up in tokens/s vs ar", font=font, fill=(60, 60, 60))
        y0 = y + 30
        y1 = y0 + row_h * len(panel)
        for k in range(int(tau_max) + 2):  # integer gridlines; tau = 1 is the ar baseline
            gx = left + int(k * tau_scale)
            d.line((gx, y0 - 4, gx, y1), fill=(120, 120, 120) if k == 1 else (225, 225, 225), width=1)
            d.text((gx - 3, y1 + 1), str(k), font=font, fill=(90, 90, 90))
        for k in range(sp_ticks + 1):
            v = k * sp_step
            gx = sp_left + int(v * sp_scale)
            d.line((gx, y0 - 4, gx, y1), fill=(120, 120, 120) if v == 1 else (225, 225, 225), width=1)
            d.text((gx - 6, y1 + 1), f"{v:g}", font=font, fill=(90, 90, 90))
        for j, r in enumerate(panel):
            ry = y0 + j * row_h
            shape = r["shape"].replace("γ=", "gamma=")
            label = "ar" if r["method"] == "ar" else f"{r['method']} {shape}"
            if r["policy"] not in ("-", "static"):
                label += f" {r['policy']}"
            if r["drafter"] != "-":
                label += f"  [{r['drafter']}]"
            colour = _COLOURS.get(r["drafter"], "grey")
            d.text((left - 8 - d.textlength(label, font=font), ry + 3), label, font=font, fill="black")
            bx = left + int(r["tau"] * tau_scale)
            d.rectangle((left, ry + 3, max(bx, left + 1), ry + row_h - 3), fill=colour)
            d.text((bx + 6, ry + 3), f"{r['tau']:.2f}  ({r['mbsu']:.2f})", font=font, fill="black")
            sp = r.get("speedup")
            if sp is None:
                d.text((sp_left + 6, ry + 3), NOT_APPLICABLE, font=font, fill=(90, 90, 90))
                continue
            sx = sp_left + int(sp * sp_scale)
            d.rectangle((sp_left, ry + 3, max(sx, sp_left + 1), ry + row_h - 3), fill=colour)
            d.text((sx + 6, ry + 3), f"{sp:.2f}x", font=font,
                   fill=(20, 120, 40) if sp > 1 else (180, 30, 30) if sp < 1 else "black")
        y = y1 + 30
    img.save(path)
