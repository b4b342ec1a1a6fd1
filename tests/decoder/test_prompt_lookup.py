"""Prompt lookup (n-gram drafts, no drafter model): the index and the drafts it proposes, and the
decoder with it, which must still equal the target's greedy decoding token for token (its law at
temperature > 0 is tested in test_decoder_sampling.py, cases ``lookup-*``)."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
from test_decoder_greedy import N_NEW, _make_ref, assert_same

import specdec_kernels as sk

specdec = pytest.importorskip("specdec")
from specdec.prompt_lookup import NgramIndex, PromptLookup  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The index and the drafts
# ---------------------------------------------------------------------------------------------


def test_index_matches_most_recent_first_and_never_the_suffix_itself():
    idx = NgramIndex(3)
    idx.extend([1, 2, 3, 9, 1, 2, 4, 1, 2])
    assert idx.matches(2) == [6, 2]  # "1 2" was followed by 4 (pos 6) and by 3 (pos 2)
    assert idx.matches(1) == [6, 2]  # "2" (indices 1, 5, 8): followed by 3 and 4; index 8 is the suffix
    assert idx.matches(3) == []  # "4 1 2" never occurred before
    assert idx.matches(4) == []  # longer than the index keeps


def test_index_grows_incrementally_like_a_fresh_one():
    seq = [5, 1, 5, 1, 5, 2, 2, 2, 5, 1]
    inc = NgramIndex(3)
    for t in seq:
        inc.extend([t])
    fresh = NgramIndex(3)
    fresh.extend(seq)
    for n in (1, 2, 3):
        assert inc.matches(n) == fresh.matches(n)


def test_chain_takes_the_longest_most_recent_match():
    lk = PromptLookup(max_ngram=3)
    idx = lk.index([7, 8, 9, 1, 7, 8, 2, 3, 4, 8, 9, 5, 7, 8, 9])
    # "7 8 9" occurred at 0 (followed by 1 7 8); "8 9" also at 9 (followed by 5): the 3-gram wins
    assert lk.chain(idx, 3) == [1, 7, 8]
    assert lk.chain(idx, 1) == [1]
    assert lk.chain(lk.index([1, 2, 3]), 4) == []  # nothing repeats


def test_chain_continuation_may_run_into_the_suffix():
    lk = PromptLookup()
    idx = lk.index([4, 6, 4, 6, 4])
    assert lk.chain(idx, 5) == [6, 4]  # the copy stops where the text ends


def test_chain_after_looks_up_suffixes_reaching_into_the_drafts():
    lk = PromptLookup(max_ngram=3, min_ngram=2)
    idx = lk.index([1, 2, 3, 4, 5, 6, 1, 2])
    assert lk.chain_after(idx, [3], 3) == [4, 5, 6]  # "2 3" (one committed, one drafted token)
    assert lk.chain_after(idx, [3, 4], 5) == [5, 6, 1, 2]  # "3 4" lies in the drafts; the copy ends
    assert lk.chain_after(idx, [9], 3) == []  # "2 9" never occurred
    assert lk.chain_after(idx, [3], 0) == [] and lk.chain_after(idx, [3], -2) == []  # no budget left
    assert lk.chain_after(idx, [], 2) == lk.chain(idx, 2) == [3, 4]
    # a suffix that equals the committed text's own last n-gram is not a match of itself
    idx = lk.index([5, 7, 5, 7])
    assert lk.chain_after(idx, [5, 7], 2) == [5, 7]  # "5 7" followed by 5 7 at position 2
    assert lk.chain_after(lk.index([8, 5, 7]), [5, 7], 2) == []  # "5 7" only at the end: nothing follows


def _check_tree(tokens, parents, depth_bound):
    t = torch.tensor([tokens])
    p = torch.tensor([parents])
    sk.tree_position_ids(p, 0)  # validates the format (raises on a bad tree)
    assert parents[0] == -1 and all(0 <= parents[i] < i for i in range(1, len(parents)))
    kids: dict[int, list[int]] = {}
    for i in range(1, len(tokens)):
        kids.setdefault(parents[i], []).append(tokens[i])
    for k in kids.values():
        assert len(set(k)) == len(k), "sibling tokens must be distinct"
    depth = sk.tree_position_ids(p, 0)[0].max().item()
    assert depth <= depth_bound
    return t, kids


def test_tree_merges_the_continuations_into_a_trie():
    lk = PromptLookup(max_ngram=2)
    ctx = [9, 1, 2, 9, 3, 4, 9, 1, 5, 9]
    tokens, parents, levels = lk.tree(lk.index(ctx), 3, branching=(3, 2, 1))
    _, kids = _check_tree(tokens, parents, 3)
    assert tokens[0] == 9 and levels == 3
    # "9" was followed by 1 5 9 (most recent), 3 4 9 and 1 2 9: children 1 and 3; 1 has 5 and 2
    assert kids[0] == [1, 3]
    one = tokens.index(1)
    assert kids[one] == [5, 2]


def test_tree_respects_branching_and_width():
    lk = PromptLookup(max_ngram=1, max_matches=8)
    ctx = [0, 1, 0, 2, 0, 3, 0, 4, 0]
    tokens, parents, _ = lk.tree(lk.index(ctx), 2, branching=(2, 1))
    _, kids = _check_tree(tokens, parents, 2)
    assert len(kids[0]) == 2 and all(len(v) <= 1 for k, v in kids.items() if k)
    tokens, parents, _ = lk.tree(lk.index(ctx), 2, width=3)
    _, kids = _check_tree(tokens, parents, 2)
    level1 = [i for i in range(1, len(tokens)) if parents[i] == 0]
    level2 = [i for i in range(1, len(tokens)) if parents[i] in level1]
    assert len(level1) <= 3 and len(level2) <= 3


def test_tree_without_match_is_the_root_alone():
    lk = PromptLookup()
    assert lk.tree(lk.index([1, 2, 3]), 4, branching=(2, 2)) == ([3], [-1], 0)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"max_ngram": 0}, "max_ngram"),
        ({"min_ngram": 0}, "min_ngram"),
        ({"max_matches": True}, "max_matches"),
        ({"max_ngram": 2, "min_ngram": 3}, "min_ngram"),
    ],
)
def test_bad_arguments_name_themselves(kw, match):
    with pytest.raises(ValueError, match=match):
        PromptLookup(**kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"lookup": 3}, "lookup must be a specdec.PromptLookup"),
        ({"lookup": PromptLookup(), "method": "rsd_s", "width": 2, "depth": 2}, "method 'sd'"),
        ({"lookup": PromptLookup(), "lookup_gamma": 0}, "lookup_gamma"),
    ],
)
def test_lookup_beside_a_drafter_checks_its_arguments(kw, match):
    kw = {"method": "sd", **kw}
    with pytest.raises(ValueError, match=match):
        specdec.SpeculativeDecoder(tm.greedy_target(), tm.greedy_drafter(), **kw)
    with pytest.raises(ValueError, match="method 'sd'"):  # a second lookup on top of prompt lookup
        specdec.SpeculativeDecoder(tm.greedy_target(), PromptLookup(), method="sd", lookup=PromptLookup())


def test_policies_other_than_static_are_refused():
    with pytest.raises(ValueError, match="prompt lookup"):
        specdec.SpeculativeDecoder(tm.greedy_target(), PromptLookup(), method="sd", policy="adaedl")


# ---------------------------------------------------------------------------------------------
# The decoder with prompt lookup: greedy equals HF greedy
# ---------------------------------------------------------------------------------------------

SHAPES = [
    ("sd-g5", {"method": "sd", "gamma": 5}),
    ("sd-g10", {"method": "sd", "gamma": 10}),
    ("specinfer-2x2", {"method": "specinfer", "branching": (2, 2)}),
    ("rsd_c-3x2x1x1", {"method": "rsd_c", "branching": (3, 2, 1, 1)}),
    ("rsd_s-w3l4", {"method": "rsd_s", "width": 3, "depth": 4}),
]


@pytest.fixture(scope="module")
def llama_ref():
    # the prompt repeats itself so that lookups hit from the first round on
    prompt = tm.GREEDY_PROMPT + tm.GREEDY_PROMPT[:4]
    return _make_ref(tm.greedy_target(), None, torch.tensor([prompt]), None)


@pytest.fixture(scope="module")
def llava_ref():
    ids, pv = tm.greedy_llava_inputs()
    return _make_ref(tm.greedy_llava(), None, ids, pv)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s[0])
def test_lookup_greedy_equals_hf(llama_ref, shape):
    ref = llama_ref
    res = specdec.SpeculativeDecoder(ref.target, PromptLookup(), **shape[1]).generate(
        ref.ids, max_new_tokens=N_NEW, temperature=0.0
    )
    assert_same(res, ref.out, ref, shape[0])
    st = res.stats
    # drafts were made and verified on both paths, and every round emitted its accepted drafts + 1
    assert st.drafted > 0 and 0 < st.accepted < st.drafted, st.as_dict()
    assert st.param_ratio == 0 and st.drafter_calls == 0
    assert st.rounds <= st.new_tokens <= st.rounds + st.accepted


@pytest.mark.parametrize("shape", SHAPES[::2], ids=lambda s: s[0])
def test_lookup_greedy_with_eos_and_llava(llama_ref, llava_ref, shape):
    for ref in (llama_ref, llava_ref):
        dec = specdec.SpeculativeDecoder(ref.target, PromptLookup(), **shape[1])
        res = dec.generate(
            ref.ids,
            pixel_values=ref.pixel_values,
            max_new_tokens=N_NEW,
            temperature=0.0,
            eos_token_id=ref.eos,
        )
        assert_same(res, ref.eos_out, ref, f"{shape[0]} eos")
        res = dec.generate(ref.ids, pixel_values=ref.pixel_values, max_new_tokens=N_NEW, temperature=0.0)
        assert_same(res, ref.out, ref, shape[0])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_lookup_short_budgets(llama_ref, n):
    ref = llama_ref
    for _, kw in SHAPES:
        res = specdec.SpeculativeDecoder(ref.target, PromptLookup(), **kw).generate(
            ref.ids, max_new_tokens=n, temperature=0.0
        )
        assert_same(res, ref.out[:, : ref.P + n], ref, f"{kw} n={n}")


# ---------------------------------------------------------------------------------------------
# Prompt lookup beside a drafter model (lookup=): greedy equals HF greedy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_ngram", [1, 2])
@pytest.mark.parametrize("policy", ["static", "adaedl"])
def test_lookup_beside_drafter_greedy_equals_hf(llama_ref, min_ngram, policy):
    ref = llama_ref
    dec = specdec.SpeculativeDecoder(
        ref.target, tm.greedy_drafter(), method="sd", gamma=4, policy=policy,
        lookup=PromptLookup(min_ngram=min_ngram), lookup_gamma=6,
    )  # fmt: skip
    for n in (N_NEW, 1, 3):
        res = dec.generate(ref.ids, max_new_tokens=n, temperature=0.0)
        assert_same(res, ref.out[:, : ref.P + n], ref, f"lookup n>={min_ngram} {policy} n={n}")
    st = res.stats if n == N_NEW else dec.generate(ref.ids, max_new_tokens=N_NEW, temperature=0.0).stats
    # both kinds of draft were made: copies (whole rounds and chain tails) and the drafter's tokens
    assert 0 < st.copied < st.drafted and st.drafter_calls > 0, st.as_dict()
    res = dec.generate(ref.ids, max_new_tokens=N_NEW, temperature=0.0, eos_token_id=ref.eos)
    assert_same(res, ref.eos_out, ref, "lookup beside drafter, eos")


def test_draft_chains_append_a_copy_as_point_masses():
    from specdec.adapter import SequenceCache
    from specdec.drafting import Sampler, draft_chains

    from specdec_kernels.policies import StaticLength

    P = tm.GREEDY_PROMPT
    dc = SequenceCache(tm.greedy_drafter())
    dc.prefill([P, P[:4]])
    calls = []

    def copy(i, drafted):
        calls.append((i, list(drafted)))
        return [5, 6] if i == 0 and len(drafted) == 2 else []

    d = draft_chains(dc, [P[-1], P[3]], [0, 1], Sampler(1.0, 0, 1.0, [3, 4]), StaticLength(6), [6, 6], None,
                     copy)
    # asked after each drafted token of each row, until row 0's copy came
    assert [len(c) for i, c in calls if i == 0] == [1, 2]
    assert [len(c) for i, c in calls if i == 1] == [1, 2, 3, 4, 5, 6]
    assert d.trees.tokens[0, 3:5].tolist() == [5, 6] and d.num_drafted == [4, 6] and d.copied == [2, 0]
    # row 0: x1 went through the drafter; x2 and the copy are not in its cache. Row 1: all but x6
    assert dc.tentative == [1, 5]
    q = d.q[0]
    assert d.q.shape == (2, 6, tm.GREEDY_VOCAB)
    onehot = torch.nn.functional.one_hot(torch.tensor([5, 6]), tm.GREEDY_VOCAB).float()
    torch.testing.assert_close(q[2:4], onehot)
    assert (q[:2] < 1).all() and torch.allclose(q[:2].sum(-1), torch.ones(2))  # the drafter's laws
    assert (d.q[1] < 1).all() and torch.allclose(d.q[1].sum(-1), torch.ones(6))
    # greedy: no laws at all; a copy offered at once ends the chain after one drafted token
    dc.prefill([P])
    d = draft_chains(dc, [P[-1]], [0], Sampler(0.0, 0, 1.0, [3]), StaticLength(6), [6], None,
                     lambda i, drafted: [7, 7, 7])  # fmt: skip
    assert d.q is None and d.num_drafted == [4] and d.copied == [3]
    # a row given a copy up front drafts nothing from the model (one-hot rows when sampling)
    dc.prefill([P, P])
    d = draft_chains(dc, [P[-1]] * 2, [0, 1], Sampler(1.0, 0, 1.0, [3, 4]), StaticLength(3), [3, 3],
                     [[9, 9], None])
    assert d.trees.tokens[0, 1:3].tolist() == [9, 9] and d.num_drafted == [2, 3] and d.copied == [2, 0]
    nines = torch.nn.functional.one_hot(torch.tensor([9, 9]), tm.GREEDY_VOCAB).float()
    torch.testing.assert_close(d.q[0, :2], nines)
