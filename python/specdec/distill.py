"""Distil a small same-tokenizer drafter from a real target (docs/algorithms.md §7), on CPU.

    python -m specdec.distill --out DIR            # smollm2-135m -> DIR (about an hour on 2 cores)

Steps:
1. **Distillation set.** The target answers :func:`specdec.prompts.training_prompts` (templated
   instructions; its chat template), greedily and sampled at temperature 0.7, in batched
   ``generate`` calls; the raw logits of every generated position are the teacher's law at
   temperature 1, kept as their top ``topk`` probabilities (renormalised: the tail beyond the top 64
   of a 135M model's law holds a few percent of the mass, and storing it would take ~100 GB).
2. **Drafter.** A Llama with tied embeddings, sized so that one draft step costs about 1/10 of a
   target step (measured at the end). Its embedding starts as the projection of the target's onto
   the target embedding's top principal directions, so token identity and similarity are there from
   step one; its layers start random.
3. **Training.** Forward KL for the first ``kl_fraction`` of the steps (the dense signal that
   teaches a random network fastest), then TVD++ (``normalize="vocab"``), which targets the
   acceptance rate itself; AdamW, warm-up and cosine decay; losses only on answer positions.
4. **Scores** (``metrics.json``): on held-out topics of the same domain and on prompts outside it
   (code, arithmetic, formats), the exact per-token acceptance at temperature 1
   (E sum_x min(p, q)), the greedy agreement (argmax q == argmax p), and tau (tokens per round) of
   the real decoder (``sd``, gamma 5) at temperature 0 and 0.7; and the measured cost of one draft
   step against one target step.

The drafter is saved as bfloat16 safetensors (the package ships it as ``smollm2-drafter``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

import specdec_kernels as sk

from . import prompts as prompt_sets


@dataclass
class DistillConfig:
    """Sizes and schedule; the defaults made the shipped ``smollm2-drafter``."""

    hidden: int = 192
    layers: int = 3
    intermediate: int = 768
    heads: int = 3
    greedy_prompts: int | None = None  # None: every training prompt
    sampled_prompts: int = 3456
    sample_temperature: float = 0.7
    max_new_tokens: int = 128
    gen_batch: int = 48
    topk: int = 64
    steps: int = 1200
    batch_tokens: int = 2048
    lr: float = 3e-3
    kl_fraction: float = 0.6
    eval_prompts: int = 16
    eval_new_tokens: int = 64
    seed: int = 0
    threads: int = 0  # 0: torch's default

    @classmethod
    def quick(cls) -> DistillConfig:
        """Seconds, for tests: the same code path on a few prompts."""
        return cls(
            hidden=32,
            layers=1,
            intermediate=64,
            heads=2,
            greedy_prompts=6,
            sampled_prompts=4,
            max_new_tokens=12,
            gen_batch=4,
            topk=8,
            steps=6,
            batch_tokens=64,
            eval_prompts=2,
            eval_new_tokens=8,
        )


@dataclass
class DistillSet:
    """Per sequence: token ids (prompt + answer), the prompt length, and per answer position the
    teacher's top-k ids and probabilities (position j predicts answer token j)."""

    ids: list[torch.Tensor] = field(default_factory=list)
    prompt_len: list[int] = field(default_factory=list)
    top_ids: list[torch.Tensor] = field(default_factory=list)
    top_p: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def answer_tokens(self) -> int:
        return sum(int(t.shape[0]) for t in self.top_ids)

    def save(self, path: str) -> None:
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: str) -> DistillSet:
        return cls(**torch.load(path))

    def extend(self, other: DistillSet) -> None:
        for k in ("ids", "prompt_len", "top_ids", "top_p"):
            getattr(self, k).extend(getattr(other, k))


class _Progress:
    """One line per update with the elapsed time and an estimate of what is left."""

    def __init__(self, what: str, total: int, log: Callable[[str], None]) -> None:
        self.what, self.total, self.log = what, max(total, 1), log
        self.t0 = time.perf_counter()

    def update(self, done: int, extra: str = "") -> None:
        el = time.perf_counter() - self.t0
        eta = el / max(done, 1) * (self.total - done)
        self.log(f"{self.what}: {done}/{self.total}  {el / 60:.1f} min, ~{eta / 60:.1f} min left  {extra}")


def encode_chat(tokenizer, prompt: str) -> list[int]:
    """The prompt as one user turn of the tokenizer's chat template, generation prompt added."""
    ids = tokenizer.apply_chat_template(prompt_sets.chat(prompt), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


@torch.no_grad()
def generate_set(
    target,
    tokenizer,
    prompts: list[str],
    *,
    temperature: float,
    cfg: DistillConfig,
    seed: int,
    log: Callable[[str], None] = print,
    what: str = "generate",
) -> DistillSet:
    """The target's answers to ``prompts`` with the teacher's top-k law at every answer position."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    enc = [encode_chat(tokenizer, p) for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))  # similar lengths: little padding
    out = DistillSet()
    prog = _Progress(what, len(enc), log)
    for s in range(0, len(order), cfg.gen_batch):
        rows = [enc[i] for i in order[s : s + cfg.gen_batch]]
        P = max(map(len, rows))
        ids = torch.full((len(rows), P), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, p in enumerate(rows):
            ids[r, P - len(p) :] = torch.tensor(p)
            att[r, P - len(p) :] = 1
        torch.manual_seed(seed + s)
        kw = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        )
        gen = target.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
            **kw,
        )
        logits = torch.stack(gen.logits, 1)  # [B, G, V], raw (temperature 1)
        new = gen.sequences[:, P:]
        for r, p in enumerate(rows):
            toks = new[r].tolist()
            n = toks.index(eos) + 1 if eos is not None and eos in toks else len(toks)
            if n == 0:
                continue
            probs = torch.softmax(logits[r, :n].float(), -1)
            top = probs.topk(cfg.topk, -1)
            out.ids.append(torch.tensor(p + toks[:n], dtype=torch.int32))
            out.prompt_len.append(len(p))
            out.top_ids.append(top.indices.to(torch.int32))
            out.top_p.append((top.values / top.values.sum(-1, keepdim=True)).to(torch.float16))
        prog.update(min(s + cfg.gen_batch, len(order)), f"{out.answer_tokens} answer tokens")
    return out


def build_drafter(target, cfg: DistillConfig):
    """A Llama with tied embeddings whose embedding is the target's projected on its top
    ``cfg.hidden`` principal directions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tc = target.config
    vocab = target.get_input_embeddings().num_embeddings
    conf = LlamaConfig(
        vocab_size=vocab,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=getattr(tc, "max_position_embeddings", 2048),
        rope_theta=getattr(tc, "rope_theta", None) or 10000.0,
        rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-5),
        tie_word_embeddings=True,
        bos_token_id=tc.bos_token_id,
        eos_token_id=tc.eos_token_id,
        pad_token_id=getattr(tc, "pad_token_id", None),
    )
    torch.manual_seed(cfg.seed)
    drafter = LlamaForCausalLM(conf)
    E = target.get_input_embeddings().weight.detach().float()
    # top principal directions of the embedding rows; the projection keeps their scale
    _, _, vh = torch.linalg.svd(E - E.mean(0), full_matrices=False)
    k = min(cfg.hidden, vh.shape[0])
    proj = torch.zeros(cfg.hidden, E.shape[1])
    proj[:k] = vh[:k]
    with torch.no_grad():
        emb = E @ proj.T
        # the target's scale would make the drafter's first logits (tied, after an RMS norm of
        # width `hidden`) tens of nats apart: start at the usual 0.02 standard deviation instead
        drafter.get_input_embeddings().weight.copy_(emb * (0.02 / emb.std()))
    drafter.tie_weights()
    return drafter


def _batches(d: DistillSet, batch_tokens: int, gen: torch.Generator):
    """Endless random batches of whole sequences holding about ``batch_tokens`` answer tokens."""
    while True:
        perm = torch.randperm(len(d), generator=gen).tolist()
        cur, n = [], 0
        for i in perm:
            cur.append(i)
            n += int(d.top_ids[i].shape[0])
            if n >= batch_tokens:
                yield cur
                cur, n = [], 0


def _answer_logits(drafter, d: DistillSet, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafter logits (float32) at the answer positions of sequences ``idx`` and the dense teacher."""
    T = max(int(d.ids[i].shape[0]) for i in idx)
    ids = torch.zeros(len(idx), T, dtype=torch.long)
    att = torch.zeros_like(ids)
    for r, i in enumerate(idx):
        ids[r, : d.ids[i].shape[0]] = d.ids[i].long()
        att[r, : d.ids[i].shape[0]] = 1
    hidden = drafter.model(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    rows, cols = [], []
    for r, i in enumerate(idx):
        P, G = d.prompt_len[i], int(d.top_ids[i].shape[0])
        rows.append(torch.full((G,), r))
        cols.append(torch.arange(P - 1, P - 1 + G))
    h = hidden[torch.cat(rows), torch.cat(cols)]
    logits = drafter.lm_head(h).float()
    teacher = torch.zeros_like(logits, requires_grad=False)
    teacher.scatter_(
        1, torch.cat([d.top_ids[i] for i in idx]).long(), torch.cat([d.top_p[i] for i in idx]).float()
    )
    return logits, teacher


def _lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train(drafter, d: DistillSet, cfg: DistillConfig, log: Callable[[str], None] = print) -> list[dict]:
    """KL then TVD++ on the answer positions; returns the loss history (every ~5% of the steps)."""
    drafter.train()
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    batches = _batches(d, cfg.batch_tokens, torch.Generator().manual_seed(cfg.seed + 1))
    kl_steps = round(cfg.steps * cfg.kl_fraction)
    history, window = [], []
    every = max(1, cfg.steps // 20)
    prog = _Progress("train", cfg.steps, log)
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        logits, teacher = _answer_logits(drafter, d, next(batches))
        if step < kl_steps:
            loss = sk.kl_loss(logits, teacher)
        else:
            loss = sk.tvdpp_loss(logits, teacher, normalize="vocab")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            q = torch.softmax(logits.detach(), -1)
            window.append((float(loss), float(torch.minimum(q, teacher).sum(-1).mean())))
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            loss_m = sum(w[0] for w in window) / len(window)
            acc_m = sum(w[1] for w in window) / len(window)
            kind = "kl" if step < kl_steps else "tvdpp"
            history.append({"step": step + 1, "loss": kind, "value": loss_m, "train_acceptance": acc_m})
            prog.update(step + 1, f"{kind} {loss_m:.4f}  acceptance (train batches) {acc_m:.3f}")
            window = []
    drafter.eval()
    return history


@torch.no_grad()
def acceptance(drafter, d: DistillSet, batch_tokens: int = 4096) -> dict[str, float]:
    """Exact acceptance at temperature 1, E sum_x min(p, q), and greedy agreement on a set."""
    total = agree = count = 0.0
    idx = list(range(len(d)))
    s = 0
    while s < len(idx):
        cur, n = [], 0
        while s < len(idx) and n < batch_tokens:
            cur.append(idx[s])
            n += int(d.top_ids[idx[s]].shape[0])
            s += 1
        logits, teacher = _answer_logits(drafter, d, cur)
        q = torch.softmax(logits, -1)
        total += float(torch.minimum(q, teacher).sum(-1).sum())
        agree += float((logits.argmax(-1) == teacher.argmax(-1)).sum())
        count += logits.shape[0]
    return {
        "acceptance_t1": total / max(count, 1),
        "greedy_agreement": agree / max(count, 1),
        "positions": int(count),
    }


def step_cost(model, *, context: int = 100, reps: int = 15) -> float:
    """Median seconds of one single-token forward after ``context`` cached tokens."""
    from transformers import DynamicCache

    from .models import cache_kwarg

    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, context), generator=gen)
    cache = DynamicCache()
    kw = cache_kwarg(model)
    with torch.no_grad():
        model(input_ids=ids, **{kw: cache}, use_cache=True)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(input_ids=ids[:, -1:], **{kw: cache}, use_cache=True)
            times.append(time.perf_counter() - t)
            cache.crop(-1)
    return sorted(times)[len(times) // 2]


def decoder_tau(
    target, drafter, tokenizer, prompts: list[str], *, temperature: float, new_tokens: int, seed: int = 0
) -> dict[str, float]:
    """tau and acceptance of the real decoder (sd, gamma 5) over ``prompts``."""
    from .decoder import SpeculativeDecoder

    dec = SpeculativeDecoder(target, drafter, method="sd", gamma=5)
    emitted = rounds = accepted = drafted = 0
    for i, p in enumerate(prompts):
        ids = torch.tensor([encode_chat(tokenizer, p)])
        st = dec.generate(
            ids,
            max_new_tokens=new_tokens,
            temperature=temperature,
            seed=seed + i,
            eos_token_id=tokenizer.eos_token_id,
        ).stats
        emitted += sum(st.emitted_per_round)
        rounds += st.rounds
        accepted += st.accepted
        drafted += round(st.draft_depth * st.rounds)
    return {"tau": emitted / max(rounds, 1), "acceptance": accepted / max(drafted, 1)}


def run(
    out: str,
    target,
    tokenizer,
    cfg: DistillConfig,
    *,
    data: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Steps 1-4; writes ``out/`` (drafter, metrics.json) and returns the metrics."""
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    target.eval()
    data_path = data or os.path.join(out, "distill_set.pt")
    if data and os.path.isfile(data):
        d = DistillSet.load(data)
        log(f"distillation set: {len(d)} answers, {d.answer_tokens} positions, read from {data}")
    else:
        train_p = prompt_sets.training_prompts(seed=cfg.seed)
        greedy_p = train_p if cfg.greedy_prompts is None else train_p[: cfg.greedy_prompts]
        sampled_p = prompt_sets.training_prompts(cfg.sampled_prompts, seed=cfg.seed + 1)
        d = generate_set(
            target,
            tokenizer,
            greedy_p,
            temperature=0.0,
            cfg=cfg,
            seed=cfg.seed,
            log=log,
            what="distillation set (greedy answers)",
        )
        d.extend(
            generate_set(
                target,
                tokenizer,
                sampled_p,
                temperature=cfg.sample_temperature,
                cfg=cfg,
                seed=cfg.seed + 7,
                log=log,
                what="distillation set (sampled answers)",
            )
        )
        d.save(data_path)
        log(f"distillation set: {len(d)} answers, {d.answer_tokens} positions -> {data_path}")
    t_data = time.perf_counter() - t0

    drafter = build_drafter(target, cfg)
    history = train(drafter, d, cfg, log)
    t_train = time.perf_counter() - t0 - t_data

    drafter.to(torch.bfloat16)  # scored as shipped
    metrics: dict = {"config": asdict(cfg), "train_positions": d.answer_tokens, "history": history}
    scored = {
        "heldout": prompt_sets.heldout_prompts(cfg.eval_prompts),
        "ood": prompt_sets.ood_prompts(cfg.eval_prompts),
    }
    for name, ps in scored.items():
        ev = generate_set(
            target, tokenizer, ps, temperature=0.0, cfg=cfg, seed=99, log=log, what=f"eval set {name}"
        )
        metrics[name] = acceptance(drafter, ev)
        for temp in (0.0, 0.7):
            metrics[name][f"decoder_t{temp:g}"] = decoder_tau(
                target, drafter, tokenizer, ps, temperature=temp, new_tokens=cfg.eval_new_tokens
            )
        log(f"{name}: {json.dumps(metrics[name])}")
    t_cost = step_cost(target)
    d_cost = step_cost(drafter)
    metrics["step_cost"] = {
        "target_s": t_cost,
        "drafter_s": d_cost,
        "ratio": d_cost / t_cost,
        "dtype": str(next(target.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    metrics["parameters"] = sum(p.numel() for p in drafter.parameters())
    metrics["minutes"] = {
        "data": t_data / 60,
        "train": t_train / 60,
        "total": (time.perf_counter() - t0) / 60,
    }
    drafter.save_pretrained(out)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    log(
        f"drafter -> {out}: {metrics['parameters'] / 1e6:.1f}M parameters, one step "
        f"{d_cost * 1e3:.2f} ms vs the target's {t_cost * 1e3:.2f} ms ({d_cost / t_cost:.3f}); "
        f"{metrics['minutes']['total']:.1f} min in all"
    )
    return metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specdec.distill", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the drafter and metrics.json")
    ap.add_argument("--target", default="smollm2-135m", help="target name or path (default: %(default)s)")
    ap.add_argument(
        "--data",
        default=None,
        help="distillation set file: read it if it exists, else write it there "
        "(default: OUT/distill_set.pt, always regenerated)",
    )
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16"),
        help="the target's dtype while generating the set (default: %(default)s)",
    )
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    ap.add_argument("--sampled-prompts", type=int, default=None)
    ap.add_argument("--greedy-prompts", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long run of the same steps (tests)")
    a = ap.parse_args(argv)
    cfg = DistillConfig.quick() if a.quick else DistillConfig()
    for k in ("steps", "sampled_prompts", "greedy_prompts", "threads"):
        if getattr(a, k) is not None:
            setattr(cfg, k, getattr(a, k))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from transformers import AutoTokenizer

    from .models import load_target
    from .named_models import resolve

    path = resolve(a.target)
    target = load_target(path, dtype=a.dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    run(a.out, target, tokenizer, cfg, data=a.data, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
