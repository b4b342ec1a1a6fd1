"""What cutting the drafter's output layer to the first N token ids (``draft_vocab=N``) costs in
acceptance and saves per draft step, on SmolLM2-135M and the shipped smollm2-drafter.

    python benchmarks/draft_vocab_probe.py                  # 8 held-out prompts, ~3 min on 2 cores
    python benchmarks/draft_vocab_probe.py --prompts 16 --sizes 4096 8192 16384 49152

For each prompt the target answers (greedily, and sampled at T=0.7); on those answers, teacher-forced
in bfloat16, it reports per N the drafter's greedy agreement with the target (argmax over the kept
ids against the target's argmax) and the exact acceptance at T=0.7, E sum_x min(p(x), q_N(x)) with
q_N the drafter's law renormalised over the kept ids. Then one draft step (a one-token forward
through specdec's SequenceCache, logits padded back to 49152) is timed per N at one thread.
Writes benchmarks/results/draft-vocab-<cpu>-<date>-<commit>.csv (one row per N).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 12288, 16384, 24576, 49152])
    ap.add_argument("--steps", type=int, default=100, help="timed draft steps per size")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from specdec import compare
    from specdec import prompts as prompt_sets
    from specdec.distill import encode_chat
    from specdec.models import SequenceCache, cut_output_vocab
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    target, drafter, tok = compare.load_real()
    V = target.get_output_embeddings().out_features
    sizes = sorted({min(n, V) for n in a.sizes})
    agree = {n: [] for n in sizes}
    accept = {n: [] for n in sizes}
    prompts = prompt_sets.heldout_prompts(a.prompts)
    for i, p in enumerate(prompts):
        ids = torch.tensor([encode_chat(tok, p)])
        P = ids.shape[1]
        for sampled in (False, True):
            torch.manual_seed(i)
            kw = {"do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 1.0} if sampled else {}
            out = target.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=a.new_tokens,
                pad_token_id=tok.eos_token_id,
                **({"do_sample": False} | kw),
            )
            with torch.no_grad():
                lt = target(out).logits[0, P - 1 : -1].float()
                ld = drafter(out).logits[0, P - 1 : -1].float()
            for n in sizes:
                if sampled:
                    pt, q = torch.softmax(lt / 0.7, -1), torch.softmax(ld[:, :n] / 0.7, -1)
                    accept[n].append(torch.minimum(pt[:, :n], q).sum(-1))
                else:
                    agree[n].append((ld[:, :n].argmax(-1) == lt.argmax(-1)).float())
        print(f"[{i + 1}/{len(prompts)}] prompt answered and scored", file=sys.stderr, flush=True)

    ids = torch.tensor([encode_chat(tok, prompts[0])])[0].tolist()
    step_ms = {}
    for n in sizes:
        sc = SequenceCache(cut_output_vocab(drafter, n), V)
        sc.prefill([ids])
        with torch.no_grad():
            for _ in range(5):
                sc.forward_chains([[5]])
            times = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                sc.forward_chains([[5]])
                times.append(time.perf_counter() - t0)
        step_ms[n] = sorted(times)[len(times) // 2] * 1e3

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": compare._commit(),
        "cpu": compare.cpu_name(),
        "torch": torch.__version__,
        "dtype": "bfloat16",
        "threads": 1,
        "prompts": len(prompts),
    }
    rows = []
    for n in sizes:
        ag, ac = torch.cat(agree[n]), torch.cat(accept[n])
        rows.append(
            {
                **meta,
                "draft_vocab": n,
                "greedy_agreement": ag.mean().item(),
                "positions_greedy": ag.numel(),
                "acceptance_t0.7": ac.mean().item(),
                "positions_sampled": ac.numel(),
                "median_step_ms": step_ms[n],
            }
        )
    if a.out is None:
        from real_model_speed import _slug

        cpu = _slug(compare.cpu_name().split(" ")[0] + " " + str(os.cpu_count()) + " cpus")
        a.out = os.path.join(HERE, "results", f"draft-vocab-{cpu}-{meta['date']}-{meta['commit']}.csv")
    compare.write_csv(rows, a.out, list(rows[0]))
    for r in rows:
        print(
            f"N={r['draft_vocab']:>6}  greedy agreement {r['greedy_agreement']:.4f}  "
            f"acceptance T=0.7 {r['acceptance_t0.7']:.4f}  step {r['median_step_ms']:.2f} ms"
        )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
