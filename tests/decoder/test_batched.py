"""Batched decoding (B > 1, issue 21): rows of different lengths, left-padded into one ``input_ids``
with an ``attention_mask``, decoded together.

1. Greedy: every row's new tokens equal the target's own greedy decoding of that row's prompt ALONE
   (``tiny_models.hf_greedy``), for every method, on a Llama and on a LLaVA target (one image per
   row), with per-row budgets (a list ``max_new_tokens``) and an ``eos_token_id`` that ends some rows
   early; ``sequences`` is right-padded with ``pad_token_id``; ``new_tokens`` holds each row's tokens.
   The observer's ``RoundEvent``s must tell the same story (each row's emitted tokens add up to its
   output; ``committed`` is the prompt plus what was emitted so far). Also: B = 1, padding on either
   side, a one-token prompt, a budget of 1, an EOS as a row's first token, and each row accepting in
   the batch exactly what it accepts alone (a drafter fed the wrong row only changes acceptance).
2. KV caches: after every round, each row's keys/values in the target's (and the drafter's) cache
   equal a fresh prefill of that row's committed tokens alone (sampled "sd", "rsd_c", "rsd_s"; and
   the LLaVA target's cache with "rsd_c").
3. Law: many copies of two prompts in one batch, one seed per row: each prompt's first two tokens
   follow the target's exact law (law.py), and rows are independent (the first tokens of two rows of
   the same call follow the product law). A smoke test by default ("sd", 300 samples per prompt),
   four methods at 1000 with --runslow. Negative controls: the other prompt's law, and pairs of rows
   given the same seed, must be rejected.
4. Bad inputs: a ValueError naming the argument; the streamer is called per row for B > 1.

The prompts differ in length AND content, so rows accept different numbers of drafts in the same
round (asserted through the observer) and their caches have different lengths: a decoder that mixes
up rows, positions or padding changes the output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import law
import numpy as np
import pytest
import tiny_models as tm
import torch

specdec = pytest.importorskip("specdec")

N_REF = 20  # tokens of every reference greedy output
BUDGETS = [16, 12, 20, 14]  # per-row max_new_tokens (<= N_REF)
PAD = 50  # pad_token_id passed to generate (an id no row ends with by chance: checked)
FILL = 1  # what the left padding of input_ids holds (masked: must not matter)

# four prompts of different lengths and contents (their greedy outputs accept drafts at different rates:
# the second repeats a 4-token cycle, the third is hard for the drafter)
LLAMA_PROMPTS = [tm.GREEDY_PROMPT, [9, 2, 33, 14], [20, 1, 44, 7, 30, 11, 6, 25, 18, 2, 36], [40, 13]]
# LLaVA rows: (text before the image, text after it, image seed); one starts with the image
LLAVA_ROWS = [
    ([3, 17, 5], [29, 8, 41, 12], 0),
    ([14], [2, 33], 1),
    ([20, 1, 44, 7, 30], [11, 6, 25, 18, 2, 36], 2),
    ([], [40, 13, 7, 22, 5], 3),
]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def left_pad(prompts: list[list[int]], fill: int = FILL) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, P], attention_mask [B, P]): the prompts left-padded with ``fill``."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), fill, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, P - len(p) :] = 1
    return ids, mask


def expected_rows(refs: list[list[int]], budgets: list[int], eos: int | None) -> list[list[int]]:
    """Each row's new tokens: its greedy output cut to its budget, then right after its first EOS."""
    out = []
    for ref, n in zip(refs, budgets, strict=True):
        new = ref[:n]
        if eos is not None and eos in new:
            new = new[: new.index(eos) + 1]
        out.append(new)
    return out


def expected_sequences(input_ids: torch.Tensor, rows: list[list[int]], pad: int) -> torch.Tensor:
    T = max(len(r) for r in rows)
    tail = torch.tensor([r + [pad] * (T - len(r)) for r in rows], dtype=torch.long)
    return torch.cat([input_ids, tail], 1)


def pick_eos(refs: list[list[int]], budgets: list[int]) -> int:
    """A token that ends at least one row early (its first occurrence in the middle of that row's
    budget) while at least one other row runs to its full budget."""
    for r, ref in enumerate(refs):
        n = budgets[r]
        for i in range(n // 3, 2 * n // 3 + 1):
            t = ref[i]
            if ref.index(t) != i:
                continue
            full = [j for j in range(len(refs)) if t not in refs[j][: budgets[j]]]
            if full and t != PAD:
                return t
    raise AssertionError(f"no EOS candidate in {refs}")


def collector():
    """(list, streamer for B = 1 appending the streamed tokens to that list)."""
    got: list[int] = []
    return got, lambda tokens: got.extend(_ints(tokens))


def _ints(xs) -> list[int]:
    return [int(x) for x in (xs.tolist() if isinstance(xs, torch.Tensor) else xs)]


class Recorder:
    """An observer keeping a copy of every RoundEvent's lists."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_round(self, event) -> None:
        self.events.append(
            {
                "round": int(event.round),
                "rows": _ints(event.rows),
                "emitted": [_ints(e) for e in event.emitted],
                "accepted": _ints(event.accepted),
                "drafted": _ints(event.drafted),
                "committed": [_ints(c) for c in event.committed],
            }
        )


def check_events(
    events: list[dict], new_tokens: list[list[int]], prompts: list[list[int]], label: str
) -> None:
    """The RoundEvents tell the same story as the result: every row's emitted tokens, round after
    round, add up to its new tokens; ``committed`` is its prompt (real tokens) plus what it emitted so
    far; a row appears in the rounds until it ends, then never again."""
    assert events, f"{label}: the observer was never called"
    B = len(prompts)
    streams: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    rounds = [ev["round"] for ev in events]
    assert rounds == list(range(rounds[0], rounds[0] + len(rounds))), f"{label}: rounds {rounds}"
    for ev in events:
        rows = ev["rows"]
        n = len(rows)
        assert len(set(rows)) == n and all(0 <= r < B for r in rows), f"{label}: rows {rows}"
        assert len(ev["emitted"]) == len(ev["accepted"]) == len(ev["drafted"]) == len(ev["committed"]) == n, (
            f"{label}: round {ev['round']}: field lengths differ from len(rows) = {n}: {ev}"
        )
        for i, r in enumerate(rows):
            assert not done[r], f"{label}: row {r} appears in round {ev['round']} after it ended"
            em = ev["emitted"][i]
            assert 1 <= len(em) <= ev["accepted"][i] + 1, f"{label}: round {ev['round']} row {r}: {ev}"
            acc, dr = ev["accepted"][i], ev["drafted"][i]
            assert 0 <= acc <= dr, f"{label}: round {ev['round']} row {r}: accepted {acc} drafted {dr}"
            streams[r] += em
            assert ev["committed"][i] == prompts[r] + streams[r], (
                f"{label}: round {ev['round']} row {r}: committed {ev['committed'][i]} != prompt "
                f"{prompts[r]} + emitted so far {streams[r]}"
            )
            if len(streams[r]) >= len(new_tokens[r]):
                done[r] = True
    for r in range(B):
        assert streams[r] == new_tokens[r], (
            f"{label}: row {r}: the rounds' emitted tokens {streams[r]} != new_tokens {new_tokens[r]}"
        )


@dataclass
class Batch:
    """B prompts of different lengths, left-padded, and each one's greedy output alone."""

    name: str
    target: object
    drafters: dict  # kind -> drafter model
    prompts: list[list[int]]  # real tokens of each row
    input_ids: torch.Tensor  # [B, P], left-padded with FILL
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    refs: list[list[int]]  # each row's HF greedy output alone, N_REF tokens
    eos: int

    def row_pixels(self, r: int):
        return None if self.pixel_values is None else self.pixel_values[r : r + 1]


def _make_batch(name, target, drafters, prompts, pixel_values) -> Batch:
    refs = []
    for r, p in enumerate(prompts):
        ids = torch.tensor([p])
        pv = None if pixel_values is None else pixel_values[r : r + 1]
        out = tm.hf_greedy(target, ids, N_REF, pixel_values=pv)
        margins = tm.greedy_margins(target, out, len(p), pv)
        assert margins.min_gap > 1e-2, f"{name} row {r}: the reference output has a near-tie: {margins}"
        refs.append(out[0, len(p) :].tolist())
    eos = pick_eos(refs, BUDGETS)
    want = expected_rows(refs, BUDGETS, eos)
    early = [r for r in range(len(prompts)) if len(want[r]) < BUDGETS[r]]
    assert early and len(early) < len(prompts), (eos, want)
    assert all(w[-1] != PAD for w in want), want
    assert len({len(p) for p in prompts}) == len(prompts), "the rows must differ in length"
    ids, mask = left_pad(prompts)
    return Batch(name, target, drafters, prompts, ids, mask, pixel_values, refs, eos)


@pytest.fixture(scope="module")
def llama_batch() -> Batch:
    target = tm.greedy_target()
    return _make_batch("llama", target, {"model": tm.greedy_drafter()}, LLAMA_PROMPTS, None)


@pytest.fixture(scope="module")
def llava_batch() -> Batch:
    target = tm.greedy_llava()
    prompts, pvs = [], []
    for before, after, seed in LLAVA_ROWS:
        ids, pv = tm.llava_inputs(target, before, after, seed=seed)
        prompts.append(ids[0].tolist())
        pvs.append(pv)
    drafters = {"model": tm.greedy_llava_drafter(), "compact": tm.greedy_compact_drafter()}
    b = _make_batch("llava", target, drafters, prompts, torch.cat(pvs))
    img = target.config.image_token_index
    assert FILL != img
    assert any(img in ref for ref in b.refs)  # generated image token ids are exercised too
    return b


def explain(res, want: list[list[int]], b: Batch, label: str) -> str:
    got = [_ints(r) for r in res.new_tokens]
    msg = [f"{label}: rows differ from HF greedy of each prompt alone"]
    for r, (g, w) in enumerate(zip(got, want, strict=True)):
        if g == w:
            continue
        i = next((k for k in range(min(len(g), len(w))) if g[k] != w[k]), min(len(g), len(w)))
        line = (
            f"  row {r} (prompt length {len(b.prompts[r])}): first difference at new token #{i}: "
            f"got {g[i : i + 6]} want {w[i : i + 6]} (lengths {len(g)} vs {len(w)}; common prefix {w[:i]})"
        )
        if i < len(w):
            seq = torch.tensor([b.prompts[r] + w[:i]])
            logits = tm.full_logits(b.target, seq, b.row_pixels(r), len(b.prompts[r]))[0, -1].double()
            top = logits.topk(2)
            gap = float(top.values[0] - top.values[1])
            line += f"; target top-2 there {top.indices.tolist()} (gap {gap:.4f})"
        msg.append(line)
    msg.append(f"  stats: {res.stats.as_dict()}")
    return "\n".join(msg)


def assert_result(res, want: list[list[int]], b: Batch, label: str, input_ids=None, pad: int = PAD) -> None:
    """new_tokens, sequences (input_ids as given, then each row's tokens right-padded) and the total."""
    input_ids = b.input_ids if input_ids is None else input_ids
    got = [_ints(r) for r in res.new_tokens]
    assert got == want, explain(res, want, b, label)
    seq = res.sequences
    assert seq.dtype == torch.int64, f"{label}: sequences dtype {seq.dtype}"
    exp = expected_sequences(input_ids, want, pad)
    assert seq.shape == exp.shape and torch.equal(seq.cpu(), exp), (
        f"{label}: sequences\n{seq.tolist()}\n!= expected (input_ids as given, rows padded with {pad})\n"
        f"{exp.tolist()}"
    )
    assert res.stats.new_tokens == sum(len(w) for w in want), (label, res.stats.as_dict())


# ---------------------------------------------------------------------------------------------
# 1. Greedy: each row equals HF greedy of its prompt alone
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    batch: str  # "llama" | "llava"
    drafter: str | None  # "model" | "compact" | "lookup" | None ("ar")
    kw: dict = field(hash=False)


GREEDY_CASES = [
    Case("llama-ar", "llama", None, {"method": "ar"}),
    Case("llama-sd-g4", "llama", "model", {"method": "sd", "gamma": 4}),
    Case("llama-sd-g4-adaedl", "llama", "model", {"method": "sd", "gamma": 4, "policy": "adaedl"}),
    Case("llama-sd-g4-confidence", "llama", "model", {"method": "sd", "gamma": 4, "policy": "confidence"}),
    Case("llama-sd-g4-block", "llama", "model", {"method": "sd", "gamma": 4, "verify": "block"}),
    Case(
        "llama-sd-g4+lookup", "llama", "model", {"method": "sd", "gamma": 4, "lookup": specdec.PromptLookup()}
    ),
    Case("llama-lookup-sd-g4", "llama", "lookup", {"method": "sd", "gamma": 4}),
    Case("llama-lookup-rsd_c-2x2", "llama", "lookup", {"method": "rsd_c", "branching": (2, 2)}),
    Case("llama-specinfer-2x2", "llama", "model", {"method": "specinfer", "branching": (2, 2)}),
    Case("llama-rsd_c-2x2x1", "llama", "model", {"method": "rsd_c", "branching": (2, 2, 1)}),
    Case("llama-rsd_s-w3l3", "llama", "model", {"method": "rsd_s", "width": 3, "depth": 3}),
    Case("llava-ar", "llava", None, {"method": "ar"}),
    Case("llava-sd-g4", "llava", "model", {"method": "sd", "gamma": 4}),
    Case("llava-specinfer-2x2", "llava", "model", {"method": "specinfer", "branching": (2, 2)}),
    Case("llava-rsd_c-2x2x1", "llava", "model", {"method": "rsd_c", "branching": (2, 2, 1)}),
    Case("llava-rsd_s-w3l3", "llava", "model", {"method": "rsd_s", "width": 3, "depth": 3}),
    Case("llava-lookup-sd-g4", "llava", "lookup", {"method": "sd", "gamma": 4}),
    Case("llava-compact-sd-g4", "llava", "compact", {"method": "sd", "gamma": 4}),
    Case("llava-compact-rsd_s-w3l3", "llava", "compact", {"method": "rsd_s", "width": 3, "depth": 3}),
]


def _decoder(b: Batch, case: Case):
    if case.drafter is None:
        drafter = None
    elif case.drafter == "lookup":
        drafter = specdec.PromptLookup()
    else:
        drafter = b.drafters[case.drafter]
    return specdec.SpeculativeDecoder(b.target, drafter, **case.kw)


@pytest.fixture
def batch(request, case) -> Batch:
    return request.getfixturevalue(f"{case.batch}_batch")


@pytest.mark.parametrize("case", GREEDY_CASES, ids=lambda c: c.id)
def test_greedy_rows_equal_hf_alone(case, batch):
    """Per-row budgets and an EOS that ends some rows early, pad_token_id fills the rest."""
    b = batch
    rec = Recorder()
    res = _decoder(b, case).generate(
        b.input_ids,
        pixel_values=b.pixel_values,
        attention_mask=b.attention_mask,
        max_new_tokens=list(BUDGETS),
        temperature=0.0,
        eos_token_id=b.eos,
        pad_token_id=PAD,
        observer=rec,
    )
    want = expected_rows(b.refs, BUDGETS, b.eos)
    assert_result(res, want, b, f"{case.id} eos={b.eos}")
    check_events(rec.events, want, b.prompts, case.id)
    if case.kw["method"] != "ar":
        st = res.stats
        assert 0 < st.accepted < st.drafted, (case.id, st.as_dict())
        # the rows really disagree: in some round they accepted different numbers of drafts
        assert any(len(set(ev["accepted"])) > 1 for ev in rec.events), (
            f"{case.id}: every round accepted as many drafts in every row: "
            f"{[ev['accepted'] for ev in rec.events]}"
        )
    else:
        assert all(ev["accepted"] == [0] * len(ev["rows"]) for ev in rec.events)


@pytest.mark.parametrize(
    "case",
    [c for c in GREEDY_CASES if c.id in ("llama-sd-g4", "llama-rsd_s-w3l3", "llava-rsd_c-2x2x1")],
    ids=lambda c: c.id,
)
def test_greedy_one_budget_no_eos(case, batch):
    """max_new_tokens an int, no EOS: every row gets exactly that many tokens, no padding."""
    b = batch
    res = _decoder(b, case).generate(
        b.input_ids,
        pixel_values=b.pixel_values,
        attention_mask=b.attention_mask,
        max_new_tokens=N_REF,
        temperature=0.0,
    )
    assert_result(res, [list(r) for r in b.refs], b, case.id)


@pytest.mark.parametrize(
    "case",
    [c for c in GREEDY_CASES if c.id in ("llama-sd-g4", "llama-rsd_s-w3l3", "llava-sd-g4")],
    ids=lambda c: c.id,
)
def test_batch_of_one_still_equals_hf(case, batch):
    """B = 1 ([1, P], no mask): the same as before the batching; the streamer takes the tokens alone."""
    b = batch
    dec = _decoder(b, case)
    for r in (0, 3):
        streamed, streamer = collector()
        ids = torch.tensor([b.prompts[r]])
        res = dec.generate(
            ids, pixel_values=b.row_pixels(r), max_new_tokens=N_REF, temperature=0.0, streamer=streamer
        )
        want = tm.hf_greedy(b.target, ids, N_REF, pixel_values=b.row_pixels(r))
        assert torch.equal(res.sequences, want), (case.id, r, res.sequences.tolist(), want.tolist())
        assert [_ints(x) for x in res.new_tokens] == [b.refs[r]]
        assert streamed == b.refs[r]


def test_padding_on_either_side_and_no_mask(llama_batch):
    """attention_mask marks padding on any side: a right-padded row beside a left-padded one; and
    attention_mask=None for rows of the same length (every token real)."""
    b = llama_batch
    dec = specdec.SpeculativeDecoder(b.target, b.drafters["model"], method="sd", gamma=4)
    p0, p1, p3 = b.prompts[0], b.prompts[1], b.prompts[3]
    P = len(p0)
    ids = torch.tensor([p0, p1 + [FILL] * (P - len(p1)), [FILL] * (P - len(p3)) + p3])
    mask = torch.tensor([[1] * P, [1] * len(p1) + [0] * (P - len(p1)), [0] * (P - len(p3)) + [1] * len(p3)])
    res = dec.generate(ids, attention_mask=mask, max_new_tokens=12, temperature=0.0, pad_token_id=PAD)
    want = [b.refs[0][:12], b.refs[1][:12], b.refs[3][:12]]
    assert [_ints(x) for x in res.new_tokens] == want, ([_ints(x) for x in res.new_tokens], want)
    assert torch.equal(res.sequences, expected_sequences(ids, want, PAD))
    # no mask: two rows of the same length
    other = [p0[-1]] + p0[:-1]
    ids = torch.tensor([p0, other])
    res = dec.generate(ids, max_new_tokens=12, temperature=0.0)
    ref_other = tm.hf_greedy(b.target, torch.tensor([other]), 12)[0, P:].tolist()
    assert [_ints(x) for x in res.new_tokens] == [b.refs[0][:12], ref_other]


def test_default_pad_token_is_eos_then_zero(llama_batch):
    b = llama_batch
    dec = specdec.SpeculativeDecoder(b.target, b.drafters["model"], method="sd", gamma=4)
    kw = dict(attention_mask=b.attention_mask, max_new_tokens=list(BUDGETS), temperature=0.0)
    res = dec.generate(b.input_ids, eos_token_id=b.eos, **kw)
    assert_result(res, expected_rows(b.refs, BUDGETS, b.eos), b, "pad = eos", pad=b.eos)
    res = dec.generate(b.input_ids, **kw)
    assert_result(res, expected_rows(b.refs, BUDGETS, None), b, "pad = 0", pad=0)


def test_seed_int_means_seed_plus_row(llama_batch):
    """seed=s is seed=[s, s+1, ..., s+B-1]; the same seeds give the same tokens."""
    b = llama_batch
    dec = specdec.SpeculativeDecoder(b.target, b.drafters["model"], method="rsd_s", width=3, depth=3)
    kw = dict(attention_mask=b.attention_mask, max_new_tokens=10, temperature=1.0)
    a = dec.generate(b.input_ids, seed=5, **kw)
    c = dec.generate(b.input_ids, seed=[5, 6, 7, 8], **kw)
    assert torch.equal(a.sequences, c.sequences), (a.sequences.tolist(), c.sequences.tolist())
    assert torch.equal(dec.generate(b.input_ids, seed=5, **kw).sequences, a.sequences)
    d = dec.generate(b.input_ids, seed=[9, 6, 7, 8], **kw)  # row 0's seed is used for row 0
    assert not torch.equal(d.sequences[0], a.sequences[0]), (d.sequences.tolist(), a.sequences.tolist())
    e = dec.generate(b.input_ids, seed=[5, 5, 5, 5], **kw)  # rows 1.. drew with 6, 7, 8 above
    assert all(not torch.equal(e.sequences[r], a.sequences[r]) for r in (1, 2, 3)), e.sequences.tolist()


EDGE_CASES = [
    c for c in GREEDY_CASES if c.id in ("llama-ar", "llama-sd-g4", "llama-rsd_c-2x2x1", "llama-rsd_s-w3l3")
]


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: c.id)
def test_greedy_edge_rows(case, batch):
    """A one-token prompt beside longer ones, a row with a budget of 1, a row whose FIRST token is
    the EOS (it ends in the first round while the others go on)."""
    b = batch
    prompts = [[b.prompts[3][0]], b.prompts[0], b.prompts[1]]
    refs = [tm.hf_greedy(b.target, torch.tensor([p]), 12)[0, len(p) :].tolist() for p in prompts]
    ids, mask = left_pad(prompts)
    dec = _decoder(b, case)
    res = dec.generate(
        ids, attention_mask=mask, max_new_tokens=[12, 1, 12], temperature=0.0, pad_token_id=PAD
    )
    want = [refs[0], refs[1][:1], refs[2]]
    assert [_ints(x) for x in res.new_tokens] == want, (case.id, res.new_tokens, want)
    assert torch.equal(res.sequences, expected_sequences(ids, want, PAD))
    eos = refs[2][0]
    res = dec.generate(ids, attention_mask=mask, max_new_tokens=12, temperature=0.0, eos_token_id=eos,
                       pad_token_id=PAD)  # fmt: skip
    want = expected_rows(refs, [12] * 3, eos)
    assert len(want[2]) == 1 and len(want[0]) > 1
    assert [_ints(x) for x in res.new_tokens] == want, (case.id, eos, res.new_tokens, want)


ALONE_IDS = (
    "llama-rsd_c-2x2x1",
    "llava-sd-g4",
    "llava-rsd_s-w3l3",
    "llava-compact-sd-g4",
    "llava-compact-rsd_s-w3l3",
)
ALONE_CASES = [c for c in GREEDY_CASES if c.id in ALONE_IDS]


def _depth(case: Case) -> int:
    kw = case.kw
    return kw.get("gamma") or kw.get("depth") or len(kw["branching"])


@pytest.mark.parametrize("case", ALONE_CASES, ids=lambda c: c.id)
def test_greedy_rows_draft_as_alone(case, batch):
    """Greedy drafts are a function of the row's own context, so a row accepts in the batch exactly
    what it accepts alone (B = 1), round by round, as long as its budget does not cap the draft:
    a drafter fed another row's tokens, image or cache changes only the acceptance (the output stays
    the target's greedy decoding), which this sees."""
    b = batch
    dec = _decoder(b, case)
    rec = Recorder()
    dec.generate(
        b.input_ids,
        pixel_values=b.pixel_values,
        attention_mask=b.attention_mask,
        max_new_tokens=N_REF,
        temperature=0.0,
        observer=rec,
    )
    depth = _depth(case)
    for r in range(len(b.prompts)):
        alone = Recorder()
        dec.generate(torch.tensor([b.prompts[r]]), pixel_values=b.row_pixels(r), max_new_tokens=N_REF,
                     temperature=0.0, observer=alone)  # fmt: skip
        want, got, done = [], [], 0
        for ev in alone.events:  # the rounds that started with more than depth + 1 tokens to go
            if N_REF - done > depth + 1:
                want.append(ev["accepted"][0])
            done += len(ev["emitted"][0])
        for ev in rec.events:
            if r in ev["rows"]:
                got.append(ev["accepted"][ev["rows"].index(r)])
        assert got[: len(want)] == want, (
            f"{case.id} row {r}: accepted per round {got} in the batch, {want} alone"
        )


# ---------------------------------------------------------------------------------------------


class CacheChecker:
    """After each round, for every row still decoding: the target's (and drafter's) cache row holds
    the keys/values of a fresh prefill of the row's committed tokens [:lens[i]], and the rest of the
    committed tokens are its pending tokens."""

    def __init__(self, target, drafter, batch: Batch | None = None) -> None:
        """``drafter`` None: the target only. ``batch``: a LLaVA batch (its rows' images)."""
        self.models = {"target": target, "drafter": drafter}
        self.batch = batch
        self.errors: list[str] = []
        self.rounds = 0
        self.checked = 0
        self.lens: list[list[int]] = []
        self.accepted: list[list[int]] = []
        self.rows: list[list[int]] = []

    def on_round(self, ev) -> None:
        self.rounds += 1
        self.rows.append(_ints(ev.rows))
        self.accepted.append(_ints(ev.accepted))
        self.lens.append([int(ev.target.lens[i]) for i in range(len(ev.rows))])
        for i, r in enumerate(_ints(ev.rows)):
            committed = _ints(ev.committed[i])
            for name, sc in (("target", ev.target), ("drafter", ev.drafter)):
                if self.models[name] is None:
                    continue
                where = f"round {ev.round} row {r} (cache row {i}) {name}"
                if sc is None:
                    self.errors.append(f"{where}: event.{name} is None")
                    continue
                L = int(sc.lens[i])
                pending = _ints(sc.pending[i])
                if committed[:L] + pending != committed:
                    self.errors.append(f"{where}: lens {L} + pending {pending} != committed {committed}")
                if self.batch is None:
                    want = tm.fresh_kv(self.models[name], committed[:L])
                else:
                    want = tm.fresh_kv(self.models[name], committed[:L], self.batch.row_pixels(r),
                                    len(self.batch.prompts[r]))  # fmt: skip
                got = sc.kv(i)
                if len(got) != len(want):
                    self.errors.append(f"{where}: {len(got)} layers, want {len(want)}")
                    continue
                for layer, (g, w) in enumerate(zip(got, want, strict=True)):
                    for kind, gt, wt in (("keys", g[0], w[0]), ("values", g[1], w[1])):
                        try:
                            torch.testing.assert_close(
                                gt.detach().float().cpu(), wt.float(), atol=1e-4, rtol=1e-4
                            )
                        except AssertionError as e:
                            self.errors.append(
                                f"{where} layer {layer} {kind} (L={L}, got shape "
                                f"{list(gt.shape)}): {' '.join(str(e).split())[:200]}"
                            )
                self.checked += 1


CACHE_BUDGETS = [12, 8, 12, 10]
CACHE_CASES = [
    ("sd-g4", {"method": "sd", "gamma": 4}),
    ("rsd_c-2x2x1", {"method": "rsd_c", "branching": (2, 2, 1)}),
    ("rsd_s-w3l3", {"method": "rsd_s", "width": 3, "depth": 3}),
]


@pytest.mark.parametrize("kw", [c[1] for c in CACHE_CASES], ids=[c[0] for c in CACHE_CASES])
def test_caches_equal_fresh_prefill(llama_batch, kw):
    b = llama_batch
    dec = specdec.SpeculativeDecoder(b.target, b.drafters["model"], **kw)
    obs = CacheChecker(b.target, b.drafters["model"])
    res = dec.generate(
        b.input_ids,
        attention_mask=b.attention_mask,
        max_new_tokens=list(CACHE_BUDGETS),
        temperature=1.0,
        seed=[11, 22, 33, 44],
        observer=obs,
    )
    assert [len(x) for x in res.new_tokens] == CACHE_BUDGETS
    assert not obs.errors, f"{len(obs.errors)} mismatches, first ones:\n" + "\n".join(obs.errors[:8])
    assert obs.rounds >= 2 and obs.checked >= 2 * len(CACHE_BUDGETS), (obs.rounds, obs.checked)
    # the check could have failed: rows of different lengths, different acceptance, rows leaving
    assert any(len(set(lens)) > 1 for lens in obs.lens), obs.lens
    assert any(len(set(acc)) > 1 for acc in obs.accepted), obs.accepted
    assert any(0 < len(rows) < len(CACHE_BUDGETS) for rows in obs.rows), obs.rows


def test_llava_target_cache_equals_fresh_prefill(llava_batch):
    """The same for the LLaVA target (image features in each row's prompt; generated image token
    ids embedded as ordinary tokens), with its text-only drafter (whose token stream differs)."""
    b = llava_batch
    dec = specdec.SpeculativeDecoder(b.target, b.drafters["model"], method="rsd_c", branching=(2, 2, 1))
    obs = CacheChecker(b.target, None, batch=b)
    res = dec.generate(
        b.input_ids,
        pixel_values=b.pixel_values,
        attention_mask=b.attention_mask,
        max_new_tokens=list(CACHE_BUDGETS),
        temperature=1.0,
        seed=[5, 6, 7, 8],
        observer=obs,
    )
    assert [len(x) for x in res.new_tokens] == CACHE_BUDGETS
    assert not obs.errors, f"{len(obs.errors)} mismatches, first ones:\n" + "\n".join(obs.errors[:8])
    assert obs.rounds >= 2 and any(len(set(acc)) > 1 for acc in obs.accepted), obs.accepted


# ---------------------------------------------------------------------------------------------
# 3. The law with B > 1, and rows independent
# ---------------------------------------------------------------------------------------------

LAW_PROMPTS = (tuple(tm.LAW_PROMPT), (10, 6, 0))  # lengths 5 and 3; TV between their laws ~0.6
LAW_ROWS = 200  # per call, the two prompts alternating (rows 0, 2, ...: prompt A)
LAW_NEW = 3  # the first round drafts two levels (as in test_decoder_sampling)
LAW_CALLS_FAST = 3  # 300 samples per prompt
LAW_CALLS_SLOW = 10  # 1000 per prompt (N_SLOW of test_decoder_sampling)
P_MIN = 1e-4
# Independence of rows: a stricter threshold. Measured with the batch-1 decoder run row by row (rows
# truly independent): 1000 cross pairs of its rows gave p = 2.9e-6 once, while 6000 pairs of the same
# kind gave p = 0.8 (the many cells of expected count ~5 give the statistic a heavier tail than
# chi-square). Rows that share their randomness are rejected far below this (the negative control).
P_MIN_PAIRS = 1e-6

LAW_CASES = {  # id: (method, sampling)
    "sd-g3": ({"method": "sd", "gamma": 3}, {}),
    "sd-g3-block": ({"method": "sd", "gamma": 3, "verify": "block"}, {}),
    "rsd_c-2x2": ({"method": "rsd_c", "branching": (2, 2)}, {}),
    "rsd_s-w3l2": ({"method": "rsd_s", "width": 3, "depth": 2}, {}),
    "specinfer-2x2": ({"method": "specinfer", "branching": (2, 2)}, {}),
    # per-row policy state (AdaEDL thresholds kept per row, rows selected as they finish)
    "sd-g3-adaedl": ({"method": "sd", "gamma": 3, "policy": "adaedl"}, {}),
    # prompt lookup: rows copy (one-hot drafts) or not, each on its own text
    "lookup-sd-g3": ({"method": "sd", "gamma": 3, "drafter": "lookup"}, {}),
    "lookup-rsd_c-2x2": ({"method": "rsd_c", "branching": (2, 2), "drafter": "lookup"}, {}),
    "sd-g3-copy": ({"method": "sd", "gamma": 3, "lookup": "copy"}, {}),
    # per-row filtering: each row's top-k / top-p cut is its own (a batch-wide cut changes the law)
    "rsd_s-w3l2-T0.8-topk6-topp0.9": (
        {"method": "rsd_s", "width": 3, "depth": 2},
        {"temperature": 0.8, "top_k": 6, "top_p": 0.9},
    ),
}
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


@functools.cache
def law_exact(
    prompt: tuple[int, ...], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> np.ndarray:
    return law.joint_law(tm.law_target(), torch.tensor([list(prompt)]), temperature=temperature, top_k=top_k,
                         top_p=top_p)  # fmt: skip


def law_seeds(call: int, paired: bool) -> list[int]:
    """One distinct seed per row; ``paired``: rows 4k and 4k+2 (prompt A), and 4k+1 and 4k+3
    (prompt B), share a seed (the negative control of the independence test)."""
    if paired:
        return [1_000_000 + call * LAW_ROWS + 2 * (b // 4) + b % 2 for b in range(LAW_ROWS)]
    return [call * LAW_ROWS + b for b in range(LAW_ROWS)]


@functools.cache
def law_draws(case_id: str, calls: int, paired: bool = False) -> np.ndarray:
    """[calls, LAW_ROWS, 2]: the first two new tokens of every row of every call."""
    prompts = [list(LAW_PROMPTS[b % 2]) for b in range(LAW_ROWS)]
    ids, mask = left_pad(prompts, fill=0)
    method, sampling = LAW_CASES[case_id]
    method = dict(method)
    drafter = specdec.PromptLookup() if method.pop("drafter", None) == "lookup" else tm.law_drafter()
    if method.get("lookup") == "copy":
        method["lookup"] = specdec.PromptLookup()
    dec = specdec.SpeculativeDecoder(tm.law_target(), drafter, **method)
    out = np.empty((calls, LAW_ROWS, 2), dtype=np.int64)
    for c in range(calls):
        res = dec.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=LAW_NEW,
            seed=law_seeds(c, paired),
            **{**SAMPLING, **sampling},
        )
        rows = [_ints(r) for r in res.new_tokens]
        assert all(len(r) == LAW_NEW for r in rows), (case_id, c, rows[:4])
        out[c] = np.array([r[:2] for r in rows])
        assert torch.equal(res.sequences[:, ids.shape[1] : ids.shape[1] + 2], torch.from_numpy(out[c])), (
            case_id
        )
    return out


def first_token_pairs(draws: np.ndarray, prompt: int) -> np.ndarray:
    """[n, 2]: first tokens of rows (4k + prompt, 4k + 2 + prompt) of each call: disjoint pairs of
    rows with the same prompt."""
    return np.stack([draws[:, prompt::4, 0].ravel(), draws[:, prompt + 2 :: 4, 0].ravel()], 1)


def _fit(label: str, samples: np.ndarray, joint: np.ndarray) -> law.FitResult:
    res = law.fit(samples, joint)
    print(f"[{label}] {res}")
    return res


def _check_batched_law(case_id: str, calls: int) -> None:
    draws = law_draws(case_id, calls)
    sampling = {**SAMPLING, **LAW_CASES[case_id][1]}
    for k, prompt in enumerate(LAW_PROMPTS):
        samples = draws[:, k::2].reshape(-1, 2)
        joint = law_exact(prompt, **sampling)
        res = _fit(f"{case_id} prompt {k} law", samples, joint)
        assert res.pvalue > P_MIN, (
            f"{case_id} prompt {prompt}: the first two tokens do not follow the target's "
            f"law: {res}\n  worst cells {law.worst_cells(samples, joint)}"
        )
        p1 = joint.sum(1)
        pairs = first_token_pairs(draws, k)
        res = _fit(f"{case_id} prompt {k} pairs", pairs, np.outer(p1, p1))
        assert res.pvalue > P_MIN_PAIRS, (
            f"{case_id} prompt {prompt}: first tokens of two rows of one call are not "
            f"independent: {res}\n  worst cells {law.worst_cells(pairs, np.outer(p1, p1))}"
        )
    # rows of different prompts side by side (rows 2k, 2k + 1)
    cross = np.stack([draws[:, 0::2, 0].ravel(), draws[:, 1::2, 0].ravel()], 1)
    prod = np.outer(
        law_exact(LAW_PROMPTS[0], **sampling).sum(1), law_exact(LAW_PROMPTS[1], **sampling).sum(1)
    )
    res = _fit(f"{case_id} cross pairs", cross, prod)
    assert res.pvalue > P_MIN_PAIRS, f"{case_id}: neighbouring rows are not independent: {res}"


def test_batched_law_sd_fast():
    _check_batched_law("sd-g3", LAW_CALLS_FAST)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", list(LAW_CASES))
def test_batched_law_slow(case_id):
    _check_batched_law(case_id, LAW_CALLS_SLOW)


def test_batched_law_rejects_the_other_prompts_law():
    """NEGATIVE CONTROL: each prompt's samples against the other prompt's law."""
    draws = law_draws("sd-g3", LAW_CALLS_FAST)
    for k in (0, 1):
        res = _fit(
            f"prompt {k} vs law of prompt {1 - k}",
            draws[:, k::2].reshape(-1, 2),
            law_exact(LAW_PROMPTS[1 - k]),
        )
        assert res.pvalue < 1e-6, str(res)


def test_batched_independence_rejects_rows_sharing_a_seed():
    """NEGATIVE CONTROL: pairs of rows with the same prompt AND the same seed (each row alone still
    follows the law) are rejected by the independence statistic, at the fast test's sample size."""
    draws = law_draws("sd-g3", LAW_CALLS_FAST, paired=True)
    for k, prompt in enumerate(LAW_PROMPTS):
        p1 = law_exact(prompt).sum(1)
        res = _fit(f"paired seeds prompt {k}", first_token_pairs(draws, k), np.outer(p1, p1))
        assert res.pvalue < 1e-3 * P_MIN_PAIRS, str(res)


# ---------------------------------------------------------------------------------------------
# 4. Bad inputs and the streamer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_decoder(llama_batch):
    return specdec.SpeculativeDecoder(llama_batch.target, llama_batch.drafters["model"], method="sd", gamma=3)


@pytest.mark.parametrize(
    "what,match",
    [
        ("mask-shape", "attention_mask"),
        ("mask-row-empty", "attention_mask"),
        ("seed-list-length", "seed"),
        ("budget-list-length", "max_new_tokens"),
        ("budget-list-zero", "max_new_tokens"),
        ("eos-not-int", "eos_token_id"),
        ("pad-not-int", "pad_token_id"),
        ("streamer-not-callable", "streamer"),
        ("observer-without-on_round", "observer"),
    ],
)
def test_bad_batched_inputs_name_the_argument(llama_batch, sd_decoder, what, match):
    b = llama_batch
    kw = dict(attention_mask=b.attention_mask, max_new_tokens=4, temperature=1.0, seed=0)
    if what == "mask-shape":
        kw["attention_mask"] = b.attention_mask[:, 1:]
    elif what == "mask-row-empty":
        mask = b.attention_mask.clone()
        mask[2] = 0
        kw["attention_mask"] = mask
    elif what == "seed-list-length":
        kw["seed"] = [1, 2, 3]
    elif what == "budget-list-length":
        kw["max_new_tokens"] = [4, 4, 4, 4, 4]
    elif what == "budget-list-zero":
        kw["max_new_tokens"] = [4, 0, 4, 4]
    elif what == "eos-not-int":
        kw["eos_token_id"] = "2"
    elif what == "pad-not-int":
        kw["pad_token_id"] = 1.5
    elif what == "streamer-not-callable":
        kw["streamer"] = [1]
    elif what == "observer-without-on_round":
        kw["observer"] = object()
    with pytest.raises(ValueError, match=match):
        sd_decoder.generate(b.input_ids, **kw)


def test_pixel_values_batch_must_match_input_ids(llava_batch):
    b = llava_batch
    dec = specdec.SpeculativeDecoder(b.target, b.drafters["model"], method="sd", gamma=3)
    for pv in (b.pixel_values[:3], torch.cat([b.pixel_values, b.pixel_values[:1]])):
        with pytest.raises(ValueError, match="pixel_values"):
            dec.generate(b.input_ids, pixel_values=pv, attention_mask=b.attention_mask, max_new_tokens=4)


def test_streamer_is_called_per_row(llama_batch, sd_decoder):
    """B > 1: streamer(tokens, row) after each round, for each row that emitted tokens; each row's
    streamed tokens add up to its new tokens."""
    b = llama_batch
    calls: list[tuple[list[int], int]] = []
    res = sd_decoder.generate(
        b.input_ids,
        attention_mask=b.attention_mask,
        max_new_tokens=list(BUDGETS),
        temperature=0.0,
        eos_token_id=b.eos,
        streamer=lambda tokens, row: calls.append((_ints(tokens), int(row))),
    )
    want = expected_rows(b.refs, BUDGETS, b.eos)
    assert [_ints(x) for x in res.new_tokens] == want
    assert calls and all(0 <= row < len(want) and toks for toks, row in calls), calls
    for r in range(len(want)):
        assert sum((toks for toks, row in calls if row == r), []) == want[r], (r, calls)
    assert len(calls) > len(want)  # several rounds per row, not one call per row at the end
