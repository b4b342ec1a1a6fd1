"""Train the miniature lab's models on CPU: ``python -m specdec.lab.train --out DIR`` (minutes).

Steps (docs/algorithms.md §7-8, small):
1. the target (tiny LLaVA) learns the scene task: cross-entropy on the answers, fresh scenes every step;
2. the text-only drafter is pretrained on the captions' language without the images: the
   "describe" prompts and their ground-truth captions only (image tokens dropped), so the other
   question types' answers are new to it until distillation;
3. the distillation set: the TARGET answers fresh questions (sampled at temperature 1), and its
   next-token laws along those answers are the teacher's;
4. the pretrained drafter is distilled from the target once per loss: KL, TVD, TVD++ with the
   reward standardised per position over the vocabulary, and over the batch; each loss is run with
   ``distill_seeds`` batch orders and scored by the mean (the shipped drafter is seed 0's);
5. the compact image drafter (the pretrained drafter plus an adapter whose first layer is the
   target's projector's) is distilled with the TVD++ normalisation that gave the higher acceptance.

Every drafter is scored on a held-out target-generated set by its exact per-token acceptance
probability at temperature 1, alpha = E[sum_x min(p(x), q(x))]; the scores go to ``metrics.json``.
Weights are saved as float16 safetensors (the package ships them; loading casts to float32).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import specdec_kernels as sk

from . import models as lab_models
from . import scenes


@dataclass
class Schedule:
    """Steps and batch sizes; the defaults are what the shipped weights were trained with."""

    # 2e-3 / batch 32 (the first weights) stalled at a target that named shapes by guess (answers
    # 59% right, colours 43%); half the rate at twice the batch reads the image (colours 100%)
    target_steps: int = 6000
    target_batch: int = 64
    target_lr: float = 1e-3
    # "describe" questions drawn this many times as often as each other task (5: half the batch).
    # Sizes ("big" / "small") are only ever named in captions; at 1 (uniform) the target learned every
    # other attribute but said "big" for every object, so whole captions were right 26% of the time.
    target_describe_weight: int = 5
    pretrain_steps: int = 1200
    pretrain_batch: int = 64
    drafter_lr: float = 3e-3
    distill_examples: int = 2048
    distill_steps: int = 600
    distill_batch: int = 64
    distill_seeds: int = 2
    heldout_examples: int = 256
    seed: int = 0

    @classmethod
    def quick(cls) -> Schedule:
        """A seconds-long run for tests: same code path, tiny counts."""
        return cls(target_steps=6, target_batch=8, pretrain_steps=6, pretrain_batch=8, distill_examples=16,
                   distill_steps=4, distill_batch=8, distill_seeds=1, heldout_examples=8)  # fmt: skip


def _lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _optimise(
    params, total: int, peak: float, step_fn: Callable[[int], torch.Tensor], log: Callable, tag: str
):
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.01, betas=(0.9, 0.98))
    losses = []
    for i in range(total):
        for g in opt.param_groups:
            g["lr"] = _lr_at(i, total, peak)
        loss = step_fn(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (i + 1) % max(1, total // 10) == 0 or i + 1 == total:
            window = losses[-max(1, total // 10) :]
            log(f"{tag}: step {i + 1}/{total} loss {sum(window) / len(window):.4f}")
    return losses


def train_target(target, sched: Schedule, log: Callable = print) -> list[float]:
    target.train()
    params = [p for p in target.parameters() if p.requires_grad]

    pool = ("describe",) * sched.target_describe_weight + tuple(t for t in scenes.TASKS if t != "describe")

    def step(i: int) -> torch.Tensor:
        b = scenes.batch(scenes.examples(sched.seed * 1_000_003 + i, sched.target_batch, tasks=pool))
        return target(**b, use_cache=False).loss

    losses = _optimise(params, sched.target_steps, sched.target_lr, step, log, "target")
    target.eval()
    return losses


def text_only(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the image tokens of right-padded rows (every row has the same number of them)."""
    keep = ids != scenes.IMAGE_ID
    n = int(keep[0].sum())
    return ids[keep].view(ids.shape[0], n), mask[keep].view(ids.shape[0], n)


def pretrain_drafter(drafter, sched: Schedule, log: Callable = print) -> list[float]:
    drafter.train()

    def step(i: int) -> torch.Tensor:
        exs = scenes.examples(sched.seed * 1_000_003 + 500_000 + i, sched.pretrain_batch, tasks=("describe",))
        b = scenes.batch(exs)
        ids, mask = text_only(b["input_ids"], b["attention_mask"])
        labels = ids.masked_fill(mask == 0, -100)
        return drafter(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss

    losses = _optimise(
        list(drafter.parameters()), sched.pretrain_steps, sched.drafter_lr, step, log, "pretrain"
    )
    drafter.eval()
    return losses


@dataclass
class DistillSet:
    """Target-generated sequences (right-padded), the target's laws at the answer positions, and the
    vision features its projector read (for the image drafter)."""

    ids: torch.Tensor  # [n, T] int64: prompt (with image tokens) + target's answer, PAD after
    mask: torch.Tensor  # [n, T] 1 on real tokens
    answer: torch.Tensor  # [n, T] bool: position t predicts an answer token (t+1 is in the answer)
    teacher: torch.Tensor  # [n, T, V] float32 target probabilities (0 where answer is False)
    features: torch.Tensor  # [n, 9, F] the target's projector input


#: Ids no answer contains. An image token in an answer would also break LLaVA's forward (it counts
#: image tokens against image features); a trained target gives them ~0 probability anyway.
NEVER_GENERATED = [scenes.PAD_ID, scenes.BOS_ID, scenes.UNK_ID, scenes.IMAGE_ID, scenes.SEP_ID] + [
    i for i, w in enumerate(scenes.VOCAB) if w.startswith("<unused")
]


@torch.no_grad()
def generate_answers(
    target, exs, *, temperature: float, seed: int, max_new_tokens: int = 48, pixel_values=None
) -> list[list[int]]:
    """The target's sampled answer ids (without </s>) to each example's question, one Philox-seeded
    batch: prompts are left-padded for generation. ``pixel_values``: the examples' images, if the
    caller has rendered them already."""
    prompts = [scenes.prompt_ids(e.question) for e in exs]
    P = max(map(len, prompts))
    ids = torch.full((len(prompts), P), scenes.PAD_ID, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p)
        att[i, P - len(p) :] = 1
    pix = scenes.pixel_values([scenes.render(e.scene) for e in exs]) if pixel_values is None else pixel_values
    torch.manual_seed(seed)
    out = target.generate(
        input_ids=ids, attention_mask=att, pixel_values=pix, do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
        max_new_tokens=max_new_tokens, eos_token_id=scenes.EOS_ID, pad_token_id=scenes.PAD_ID,
        suppress_tokens=NEVER_GENERATED,
    )  # fmt: skip
    answers = []
    for row in out[:, P:].tolist():
        answers.append(row[: row.index(scenes.EOS_ID)] if scenes.EOS_ID in row else row)
    return answers


@torch.no_grad()
def answer_accuracy(target, n: int = 240, *, seed: int = 11_000_000) -> dict[str, float]:
    """Exact-match rate of the target's greedy answers on fresh questions, per task and overall."""
    exs = scenes.examples(seed, n)
    tok = scenes.Tokenizer()
    hits: dict[str, list[bool]] = {}
    for s in range(0, n, 120):
        chunk = exs[s : s + 120]
        for e, a in zip(chunk, generate_answers(target, chunk, temperature=0.0, seed=0), strict=True):
            hits.setdefault(scenes.task_of(e), []).append(tok.decode(a) == e.answer)
    out = {t: sum(h) / len(h) for t, h in sorted(hits.items())}
    out["all"] = sum(sum(h) for h in hits.values()) / n
    return out


@torch.no_grad()
def distillation_set(target, n: int, *, seed: int, batch: int = 256, log: Callable = print) -> DistillSet:
    exs = scenes.examples(seed, n)
    rows, pixels = [], []
    for s in range(0, n, batch):
        chunk = exs[s : s + batch]
        pixels.append(scenes.pixel_values([scenes.render(e.scene) for e in chunk]))
        answers = generate_answers(target, chunk, temperature=1.0, seed=seed + s, pixel_values=pixels[-1])
        for e, a in zip(chunk, answers, strict=True):
            rows.append(scenes.prompt_ids(e.question) + a + [scenes.EOS_ID])
    T = max(map(len, rows))
    ids = torch.full((n, T), scenes.PAD_ID, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    answer = torch.zeros((n, T), dtype=torch.bool)
    for i, (r, e) in enumerate(zip(rows, exs, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        answer[i, len(scenes.prompt_ids(e.question)) - 1 : len(r) - 1] = True
    pixels = torch.cat(pixels)
    teacher = torch.zeros((n, T, len(scenes.VOCAB)))
    feats = []
    proj = target.model.multi_modal_projector
    hook = proj.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    try:
        for s in range(0, n, batch):
            sl = slice(s, s + batch)
            logits = target(input_ids=ids[sl], attention_mask=mask[sl], pixel_values=pixels[sl],
                            use_cache=False).logits  # fmt: skip
            teacher[sl] = torch.softmax(logits.float(), -1) * answer[sl, :, None]
    finally:
        hook.remove()
    log(f"distillation set: {n} target answers, {int(answer.sum())} answer positions")
    return DistillSet(ids, mask, answer, teacher, torch.cat(feats))


def _drafter_logits(
    drafter, d: DistillSet, idx: torch.Tensor, image: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafter logits aligned with the target's positions, and the answer mask, for rows ``idx``."""
    ids, mask, answer = d.ids[idx], d.mask[idx], d.answer[idx]
    if image:
        logits = drafter(ids, image_features=d.features[idx], attention_mask=mask, use_cache=False).logits
        return logits, answer
    t_ids, t_mask = text_only(ids, mask)
    logits = drafter(input_ids=t_ids, attention_mask=t_mask, use_cache=False).logits
    keep = ids != scenes.IMAGE_ID
    return logits, answer[keep].view(answer.shape[0], -1)


def _teacher(d: DistillSet, idx: torch.Tensor, image: bool) -> torch.Tensor:
    p = d.teacher[idx]
    if image:
        return p
    keep = d.ids[idx] != scenes.IMAGE_ID
    return p[keep].view(p.shape[0], -1, p.shape[-1])


LOSSES: dict[str, tuple[Callable, dict]] = {
    "kl": (sk.kl_loss, {}),
    "tvd": (sk.tvd_loss, {}),
    "tvdpp_vocab": (sk.tvdpp_loss, {"normalize": "vocab"}),
    "tvdpp_batch": (sk.tvdpp_loss, {"normalize": "batch"}),
}


def distil(drafter, d: DistillSet, loss: str, sched: Schedule, *, image: bool = False, order: int = 0,
           log: Callable = print):  # fmt: skip
    """Fine-tune ``drafter`` on the distillation set with ``loss``; ``order`` seeds the batch order."""
    fn, kw = LOSSES[loss]
    drafter.train()
    gen = torch.Generator().manual_seed(sched.seed + 17 + 1000 * order)

    def step(i: int) -> torch.Tensor:
        idx = torch.randint(0, d.ids.shape[0], (sched.distill_batch,), generator=gen)
        logits, answer = _drafter_logits(drafter, d, idx, image)
        return fn(logits.float(), _teacher(d, idx, image), mask=answer, **kw)

    tag = f"distil {'image' if image else 'text'} {loss}" + (f" (order {order})" if order else "")
    losses = _optimise(list(drafter.parameters()), sched.distill_steps, sched.drafter_lr, step, log, tag)
    drafter.eval()
    return losses


@torch.no_grad()
def acceptance(drafter, d: DistillSet, *, image: bool = False, batch: int = 256) -> float:
    """Mean over answer positions of sum_x min(p(x), q(x)): the probability that speculative
    sampling at temperature 1 accepts the drafter's token at that position."""
    total, count = 0.0, 0
    for s in range(0, d.ids.shape[0], batch):
        idx = torch.arange(s, min(s + batch, d.ids.shape[0]))
        logits, answer = _drafter_logits(drafter, d, idx, image)
        q = torch.softmax(logits.float(), -1)
        p = _teacher(d, idx, image)
        total += float(torch.minimum(p, q).sum(-1)[answer].sum())
        count += int(answer.sum())
    return total / max(count, 1)


def _save(model, path: str) -> None:
    """float16 safetensors (half the package size; the lab loads them as float32)."""
    model = copy.deepcopy(model).to(torch.float16)
    model.save_pretrained(path)


def train_all(
    out: str, sched: Schedule | None = None, log: Callable = print, *, target_dir: str | None = None
) -> dict:
    """Run steps 1-5 and save the target and every drafter under ``out`` with ``metrics.json``.

    ``target_dir``: load that (trained) target instead of step 1, e.g. to distil new drafters against
    the shipped one."""
    sched = sched or Schedule()
    t0 = time.perf_counter()
    torch.manual_seed(sched.seed)
    metrics: dict = {
        "schedule": sched.__dict__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    os.makedirs(out, exist_ok=True)
    if target_dir is None:
        target = lab_models.build_target(sched.seed)
        metrics["target_loss"] = _tail(train_target(target, sched, log))
        _save(target, os.path.join(out, "target"))
        target_dir = os.path.join(out, "target")
        lab_models.build_processor().save_pretrained(target_dir)  # `specdec generate` loads it
    elif os.path.abspath(target_dir) != os.path.abspath(os.path.join(out, "target")):
        if not os.path.isdir(target_dir):
            raise FileNotFoundError(f"target_dir {target_dir!r}: no such directory")
        _save(lab_models.load_target(target_dir), os.path.join(out, "target"))
        lab_models.build_processor().save_pretrained(os.path.join(out, "target"))
    # The teacher is the target as shipped (float16 weights, float32 arithmetic), not the one in memory.
    target = lab_models.load_target(target_dir, dtype=torch.float32)
    metrics["target_accuracy"] = answer_accuracy(target)
    log(f"target exact-match accuracy: {metrics['target_accuracy']}")
    text = lab_models.build_text_drafter(sched.seed + 1)
    metrics["pretrain_loss"] = _tail(pretrain_drafter(text, sched, log))
    train_set = distillation_set(target, sched.distill_examples, seed=sched.seed + 7_000_000, log=log)
    heldout = distillation_set(target, sched.heldout_examples, seed=sched.seed + 9_000_000, log=log)
    _save(text, os.path.join(out, "pretrained"))
    alpha = {"pretrained": acceptance(text, heldout)}
    per_order: dict[str, list[float]] = {}
    for loss in LOSSES:
        for order in range(sched.distill_seeds):
            student = copy.deepcopy(text)
            losses = distil(student, train_set, loss, sched, order=order, log=log)
            per_order.setdefault(loss, []).append(acceptance(student, heldout))
            if order == 0:
                metrics[f"{loss}_loss"] = _tail(losses)
                _save(student, os.path.join(out, loss))
        alpha[loss] = sum(per_order[loss]) / len(per_order[loss])
        log(f"acceptance at temperature 1, text-only drafter, {loss}: {alpha[loss]:.4f} {per_order[loss]}")
    metrics["acceptance_per_order"] = per_order
    best = max(("tvdpp_vocab", "tvdpp_batch"), key=lambda k: alpha[k])
    image = lab_models.build_image_drafter(text, target)
    alpha["image_before_distillation"] = acceptance(image, heldout, image=True)
    metrics["image_loss"] = _tail(distil(image, train_set, best, sched, image=True, log=log))
    alpha["image"] = acceptance(image, heldout, image=True)
    log(f"acceptance at temperature 1, image drafter ({best}): {alpha['image']:.4f}")
    image_half = copy.deepcopy(image).to(torch.float16)
    image_half.save_pretrained(os.path.join(out, "image"))
    metrics.update(acceptance=alpha, image_loss_kind=best, train_seconds=time.perf_counter() - t0)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    log(f"saved to {out} in {metrics['train_seconds']:.0f} s")
    return metrics


def _tail(losses: list[float]) -> dict:
    k = max(1, len(losses) // 10)
    return {"first": sum(losses[:k]) / k, "last": sum(losses[-k:]) / k}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specdec.lab.train", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default=lab_models.weights_dir(), help="where to save (default: the package's weights)"
    )
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny step counts)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--target",
        default=None,
        metavar="DIR",
        help="skip step 1: distil drafters against this trained target (e.g. the shipped one)",
    )
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    sched = Schedule.quick() if args.quick else Schedule()
    sched.seed = args.seed
    train_all(args.out, sched, target_dir=args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
