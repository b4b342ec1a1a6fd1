"""What the decoder feeds each model, KV-cache consistency, reproducibility, vocabulary alignment,
the compact LLaVA drafter, and bad inputs.

The KV-cache checks observe the target through the decoder's observer: after every round, the
key/value entries the target's cache holds for the committed prefix must equal those of a fresh
prefill of that prefix (every layer: deeper layers' keys depend on the whole context, so a
slot holding the KV of a rejected sibling, a stale entry or a wrong position shows up here even
when the greedy output happens to survive it).
"""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch

specdec = pytest.importorskip("specdec")

N_NEW = 40


TREE_AND_CHAIN = [
    ("sd-g5", {"method": "sd", "gamma": 5}),
    ("sd-g5-adaedl", {"method": "sd", "gamma": 5, "policy": "adaedl"}),
    ("specinfer-2x2", {"method": "specinfer", "branching": (2, 2)}),
    ("rsd_c-2x2x2", {"method": "rsd_c", "branching": (2, 2, 2)}),
    ("rsd_s-w4l3", {"method": "rsd_s", "width": 4, "depth": 3}),
]
IDS = [c[0] for c in TREE_AND_CHAIN]
KWS = [c[1] for c in TREE_AND_CHAIN]


class Recorder:
    """Wraps ``model.forward`` (through monkeypatch, undone after the test) and records, per call,
    the input ids (row 0), whether pixel_values came, and the position ids."""

    def __init__(self, monkeypatch, model) -> None:
        self.calls: list[dict] = []
        orig = model.forward

        def forward(*args, **kw):
            ids = kw.get("input_ids", args[0] if args else None)
            rec = {"ids": None if ids is None else ids[0].tolist(),
                   "pixel_values": kw.get("pixel_values") is not None,
                   "position_ids": None if kw.get("position_ids") is None else kw["position_ids"][0].tolist()}
            self.calls.append(rec)
            return orig(*args, **kw)

        monkeypatch.setattr(model, "forward", forward)


class CacheCheck:
    """Observer: after every round, the target's cached keys of row 0 equal a fresh prefill of its
    committed tokens (as many as it has entries for)."""

    def __init__(self, model, label: str, pixel_values=None, prompt_len: int = 0) -> None:
        self.model, self.label, self.pv, self.prompt_len = model, label, pixel_values, prompt_len
        self.checked = 0
        self.prev: tuple[int, list[int]] | None = None

    def on_round(self, ev) -> None:
        L = ev.target.lens[0]
        seq = ev.committed[0]
        fresh = tm.fresh_kv(self.model, seq[:L], self.pv, self.prompt_len)
        bad = set()
        for (got, _), (want, _) in zip(ev.target.kv(0), fresh, strict=True):
            err = (got - want).abs().amax(dim=(0, 2))
            bad |= set((err > 1e-4).nonzero().flatten().tolist())
        assert not bad, (
            f"{self.label}: after round {ev.round} the KV cache (length {L}) differs from a fresh prefill "
            f"of the committed tokens at slots {sorted(bad)} (tokens there {[seq[j] for j in sorted(bad)]}); "
            f"the round emitted {ev.emitted[0]} after a cache of length {self.prev}")
        self.prev = L
        self.checked += 1


@pytest.mark.parametrize("kw", KWS, ids=IDS)
def test_target_kv_cache_matches_fresh_prefill_greedy(monkeypatch, kw):
    target, drafter = tm.greedy_target(), tm.greedy_drafter()
    ids = torch.tensor([tm.GREEDY_PROMPT])
    check = CacheCheck(target, f"{kw} greedy")
    specdec.SpeculativeDecoder(target, drafter, **kw).generate(ids, max_new_tokens=24, temperature=0.0,
                                                               observer=check)
    assert check.checked > 3


@pytest.mark.parametrize("kw", [KWS[0], KWS[3], KWS[4]], ids=[IDS[0], IDS[3], IDS[4]])
def test_target_kv_cache_matches_fresh_prefill_sampling(monkeypatch, kw):
    target, drafter = tm.greedy_target(), tm.greedy_drafter()
    ids = torch.tensor([tm.GREEDY_PROMPT])
    check = CacheCheck(target, f"{kw} T=1 seed 3")
    specdec.SpeculativeDecoder(target, drafter, **kw).generate(ids, max_new_tokens=24, temperature=1.0,
                                                               seed=3, observer=check)
    assert check.checked > 3


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("kw", KWS, ids=IDS)
def test_self_drafting_accepts_every_draft(kw, temperature):
    """The target as its own drafter (separate caches): every draft must be accepted in every round
    (p == q: the chain ratio is 1, and the first child of every tree node is accepted), so tau is the
    drafted depth + 1. A drafter cache that was rolled back or compacted wrong would propose other
    tokens and show here as rejections; the target-cache tests above cannot see the drafter's."""
    target = tm.greedy_target()
    n = 24
    res = specdec.SpeculativeDecoder(target, target, **kw).generate(
        torch.tensor([tm.GREEDY_PROMPT]), max_new_tokens=n, temperature=temperature, seed=3)
    st = res.stats
    depth = kw.get("gamma") or kw.get("depth") or len(kw["branching"])
    assert st.new_tokens == n
    # every drafted level is accepted (AdaEDL may stop drafting early: its own depth counts)
    assert st.accepted == round(st.draft_depth * st.rounds), st.emitted_per_round
    if kw.get("policy", "static") == "static":
        # every round but the last (whose depth the budget cuts) drafts the full depth
        assert st.emitted_per_round[:-1] == [depth + 1] * (st.rounds - 1), st.emitted_per_round


@pytest.mark.parametrize("kw", [KWS[0], KWS[3]], ids=[IDS[0], IDS[3]])
def test_llava_target_kv_cache_matches_fresh_prefill(monkeypatch, kw):
    target, drafter = tm.greedy_llava(), tm.greedy_llava_drafter()
    ids, pv = tm.greedy_llava_inputs()
    rec = Recorder(monkeypatch, target)
    check = CacheCheck(target, f"llava {kw}", pv, ids.shape[1])
    specdec.SpeculativeDecoder(target, drafter, **kw).generate(ids, pixel_values=pv, max_new_tokens=24,
                                                               temperature=0.0, observer=check)
    monkeypatch.undo()
    assert check.checked > 3
    # only the prefill carries pixel_values, even though the image token id is generated later
    assert rec.calls[0]["pixel_values"] and not any(c["pixel_values"] for c in rec.calls[1:])


# ---------------------------------------------------------------------------------------------
# What the text-only drafter sees
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["same", "small"])
@pytest.mark.parametrize("kw", [KWS[0], KWS[4]], ids=[IDS[0], IDS[4]])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_text_drafter_never_sees_image_tokens(monkeypatch, kw, kind, temperature):
    """The drafter's prefill is the prompt without its image tokens (text before + text after);
    later calls may hold the image token id only as a GENERATED token (vocab 52), and a drafter
    without that id (vocab 51) is never fed an id it has no embedding for."""
    target, drafter = tm.greedy_llava(), tm.greedy_llava_drafter(kind)
    img = target.config.image_token_index
    ids, pv = tm.greedy_llava_inputs()
    rec = Recorder(monkeypatch, drafter)
    dec = specdec.SpeculativeDecoder(target, drafter, **kw)
    res = dec.generate(ids, pixel_values=pv, max_new_tokens=N_NEW, temperature=temperature, seed=0)
    monkeypatch.undo()
    new = res.sequences[0, ids.shape[1]:].tolist()
    before, after = tm.LLAVA_TEXT
    assert rec.calls, "the drafter was never called"
    first = rec.calls[0]
    assert first["position_ids"][0] == 0 and first["ids"] == list(before) + list(after), first
    vocab = drafter.get_input_embeddings().num_embeddings
    for c in rec.calls:
        assert c["ids"] is not None and max(c["ids"]) < vocab, c
    if img not in new:
        assert not any(img in c["ids"] for c in rec.calls[1:])
    if temperature == 0.0:
        assert img in new  # the greedy output holds the image token id: that path ran


# ---------------------------------------------------------------------------------------------
# Vocabulary alignment: what the drafter proposes
# ---------------------------------------------------------------------------------------------


def _capture_drafts(monkeypatch) -> list[torch.Tensor]:
    """Drafted token tensors of every round, through the strategies' drafting functions."""
    import specdec.strategies as strat

    drafts: list[torch.Tensor] = []
    for name in ("draft_chains", "draft_trees"):
        fn = getattr(strat, name)

        def wrapped(*a, _fn=fn, **k):
            d = _fn(*a, **k)
            n = d.trees.num_nodes.tolist()
            drafts.extend(d.trees.tokens[i, 1 : n[i]].clone() for i in range(len(n)))
            return d

        monkeypatch.setattr(strat, name, wrapped)
    return drafts


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("kw", [KWS[0], KWS[2], KWS[3], KWS[4]], ids=[IDS[0], IDS[2], IDS[3], IDS[4]])
def test_drafts_stay_in_both_vocabularies(monkeypatch, kw, temperature):
    target = tm.greedy_target()
    ids = torch.tensor([tm.GREEDY_PROMPT])
    for kind, limit in (("small", tm.SMALL_DRAFT_VOCAB), ("large", tm.GREEDY_VOCAB)):
        drafter = tm.greedy_drafter(kind)
        drafts = _capture_drafts(monkeypatch)
        res = specdec.SpeculativeDecoder(target, drafter, **kw).generate(
            ids, max_new_tokens=32, temperature=temperature, seed=1)
        monkeypatch.undo()
        assert drafts, "no draft observed"
        allt = torch.cat(drafts)
        assert allt.numel() > 0 and int(allt.min()) >= 0, allt
        assert int(allt.max()) < limit, (
            f"{kind}-vocab drafter ({drafter.config.vocab_size} ids, target {tm.GREEDY_VOCAB}) proposed ids "
            f"{sorted(set(t for t in allt.tolist() if t >= limit))}")
        if kind == "small" and temperature == 0.0:
            # the target still emits ids the drafter lacks (its greedy output holds 48..51)
            assert int(res.sequences.max()) >= tm.SMALL_DRAFT_VOCAB


# ---------------------------------------------------------------------------------------------
# Reproducibility and state between calls
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"method": "ar"}, KWS[0], KWS[2], KWS[3], KWS[4]],
                         ids=["ar", IDS[0], IDS[2], IDS[3], IDS[4]])
def test_same_seed_same_output_and_no_state_between_calls(kw):
    target = tm.greedy_target()
    drafter = None if kw["method"] == "ar" else tm.greedy_drafter()
    dec = specdec.SpeculativeDecoder(target, drafter, **kw)
    ids = torch.tensor([tm.GREEDY_PROMPT])
    other = torch.tensor([[7, 1, 30, 2]])
    a = dec.generate(ids, max_new_tokens=20, temperature=1.0, seed=11)
    b = dec.generate(other, max_new_tokens=9, temperature=0.8, top_k=5, seed=5)  # a different request
    c = dec.generate(ids, max_new_tokens=20, temperature=1.0, seed=11)
    d = specdec.SpeculativeDecoder(target, drafter, **kw).generate(ids, max_new_tokens=20, temperature=1.0,
                                                                   seed=11)
    assert a.sequences.shape == (1, ids.shape[1] + 20) and b.sequences.shape == (1, other.shape[1] + 9)
    assert torch.equal(a.sequences[:, :ids.shape[1]], ids)
    assert torch.equal(a.sequences, c.sequences), "same seed, same decoder: different outputs"
    assert torch.equal(a.sequences, d.sequences), "same seed, fresh decoder: different outputs"
    e = dec.generate(ids, max_new_tokens=20, temperature=1.0, seed=12)
    assert not torch.equal(a.sequences, e.sequences), "seeds 11 and 12 gave the same 20 sampled tokens"


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("kw", [KWS[0], KWS[3], KWS[4]], ids=[IDS[0], IDS[3], IDS[4]])
def test_sampled_length_is_prompt_plus_new(kw, n):
    target, drafter = tm.greedy_target(), tm.greedy_drafter()
    ids = torch.tensor([tm.GREEDY_PROMPT])
    dec = specdec.SpeculativeDecoder(target, drafter, **kw)
    for seed in range(2):
        res = dec.generate(ids, max_new_tokens=n, temperature=1.0, seed=seed)
        assert res.sequences.shape == (1, ids.shape[1] + n)
        assert res.stats.new_tokens == n
        assert res.sequences.dtype == torch.int64


def test_left_padding_with_attention_mask_is_dropped():
    """A left-padded prompt with its attention_mask gives the output of the unpadded prompt."""
    target, drafter = tm.greedy_target(), tm.greedy_drafter()
    ids = torch.tensor([tm.GREEDY_PROMPT])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    dec = specdec.SpeculativeDecoder(target, drafter, method="sd", gamma=3)
    a = dec.generate(ids, max_new_tokens=16, temperature=0.0)
    b = dec.generate(padded, attention_mask=mask, max_new_tokens=16, temperature=0.0)
    assert torch.equal(a.sequences[0, ids.shape[1]:], b.sequences[0, padded.shape[1]:])
    c = dec.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, temperature=0.0)
    assert torch.equal(a.sequences, c.sequences)


# ---------------------------------------------------------------------------------------------
# The compact LLaVA drafter (small LM + projector fed with the target's image features)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compact_drafter():
    if getattr(specdec, "CompactLlavaDrafter", None) is None:
        pytest.skip("specdec.CompactLlavaDrafter is not available")
    return tm.greedy_compact_drafter()


@pytest.mark.parametrize("kw", [KWS[0], KWS[3], KWS[4]], ids=[IDS[0], IDS[3], IDS[4]])
def test_compact_llava_drafter_greedy_equals_hf(compact_drafter, kw, monkeypatch):
    target = tm.greedy_llava()
    ids, pv = tm.greedy_llava_inputs()
    want = tm.hf_greedy(target, ids, N_NEW, pixel_values=pv)
    feats_seen = []
    orig = compact_drafter.forward

    def forward(input_ids, image_features=None, **k):
        feats_seen.append(image_features is not None)
        return orig(input_ids, image_features=image_features, **k)

    monkeypatch.setattr(compact_drafter, "forward", forward)
    dec = specdec.SpeculativeDecoder(target, compact_drafter, **kw)
    res = dec.generate(ids, pixel_values=pv, max_new_tokens=N_NEW, temperature=0.0)
    monkeypatch.undo()
    g, w = res.sequences[0].tolist(), want[0].tolist()
    first = next((i for i in range(len(w)) if g[i] != w[i]), None)
    assert g == w, (f"{kw}: compact drafter output differs from HF greedy at position {first}: "
                    f"{g[first:]} vs {w[first:]}")
    # the compact drafter got the target's image features in its prefill, and only there
    assert feats_seen and feats_seen[0] and not any(feats_seen[1:]), feats_seen


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method"):
        specdec.SpeculativeDecoder(tm.greedy_target(), tm.greedy_drafter(), method="medusa")


@pytest.mark.parametrize("kw, word", [
    ({"method": "sd", "gamma": 0}, "gamma"),
    ({"method": "sd", "gamma": -2}, "gamma"),
    ({"method": "rsd_c"}, "branching"),
    ({"method": "specinfer"}, "branching"),
    ({"method": "rsd_c", "branching": ()}, "branching"),
    ({"method": "rsd_c", "branching": (2, 0)}, "branching"),
    ({"method": "rsd_s", "depth": 2}, "width"),
    ({"method": "rsd_s", "width": 3}, "depth"),
    ({"method": "sd", "policy": "nope"}, "policy"),
    ({"method": "sd", "policy": "confidence", "entropy_gamma": 0.2}, "entropy_gamma"),
    ({"method": "sd", "policy": "adaedl", "max_len": 3}, "entropy_gamma"),
    ({"method": "sd", "policy": "adaedl", "nope": 1}, "policy 'adaedl'"),
    ({"method": "rsd_c", "policy": "adaedl"}, "chains"),
    ({"method": "sd", "draft_vocab": 0}, "draft_vocab"),
])
def test_bad_method_arguments_raise(kw, word):
    with pytest.raises(ValueError, match=word):
        specdec.SpeculativeDecoder(tm.greedy_target(), tm.greedy_drafter(), **kw)


def test_speculative_method_without_drafter_raises():
    with pytest.raises(ValueError, match="drafter"):
        specdec.SpeculativeDecoder(tm.greedy_target(), None, method="sd")


def test_pixel_values_to_text_target_raises():
    dec = specdec.SpeculativeDecoder(tm.greedy_target(), tm.greedy_drafter(), method="sd", gamma=3)
    _, pv = tm.greedy_llava_inputs()
    with pytest.raises(ValueError, match="pixel_values"):
        dec.generate(torch.tensor([tm.GREEDY_PROMPT]), pixel_values=pv, max_new_tokens=4)


def test_llava_image_tokens_without_pixel_values_raise():
    dec = specdec.SpeculativeDecoder(tm.greedy_llava(), tm.greedy_llava_drafter(), method="sd", gamma=3)
    ids, _ = tm.greedy_llava_inputs()
    with pytest.raises(ValueError, match="pixel_values"):
        dec.generate(ids, max_new_tokens=4)


@pytest.mark.parametrize("kw, word", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_k": -1}, "top_k"),
])
def test_bad_generate_arguments_raise(kw, word):
    dec = specdec.SpeculativeDecoder(tm.greedy_target(), tm.greedy_drafter(), method="sd", gamma=3)
    with pytest.raises(ValueError, match=word):
        dec.generate(torch.tensor([tm.GREEDY_PROMPT]), **kw)


# ---------------------------------------------------------------------------------------------
# draft_vocab: the drafter's output layer cut to the first ids
# ---------------------------------------------------------------------------------------------


def test_cut_output_vocab_is_a_view_and_leaves_the_model_alone():
    from specdec.models import cut_output_vocab

    d = tm.greedy_drafter()
    head = d.get_output_embeddings().weight
    view = cut_output_vocab(d, 40)
    assert view.get_output_embeddings().weight.shape == (40, head.shape[1])
    assert view.get_output_embeddings().weight.data_ptr() == head.data_ptr()  # shared, not copied
    assert d.get_output_embeddings().weight.shape == head.shape  # the model keeps its head
    ids = torch.tensor([tm.GREEDY_PROMPT])
    with torch.no_grad():
        torch.testing.assert_close(view(ids).logits, d(ids).logits[..., :40])
    assert cut_output_vocab(d, 10_000) is d
    with pytest.raises(ValueError, match="output layer is an nn.Linear"):
        cut_output_vocab(torch.nn.Linear(4, 4), 2)  # no output embeddings to cut
    with pytest.raises(ValueError, match="draft_vocab applies to a drafter model"):
        specdec.SpeculativeDecoder(tm.greedy_target(), specdec.PromptLookup(), method="sd", draft_vocab=8)


@pytest.mark.parametrize("kw", [{"method": "sd", "gamma": 4}, {"method": "rsd_s", "width": 2, "depth": 3}],
                         ids=["sd", "rsd_s"])  # fmt: skip
def test_draft_vocab_keeps_greedy_output_and_drafts_only_kept_ids(kw, monkeypatch):
    target, ids = tm.greedy_target(), torch.tensor([tm.GREEDY_PROMPT])
    want = tm.hf_greedy(target, ids, 24)
    drafts = _capture_drafts(monkeypatch)
    res = specdec.SpeculativeDecoder(target, tm.greedy_drafter(), draft_vocab=40, **kw).generate(
        ids, max_new_tokens=24, temperature=0.0)
    assert torch.equal(res.sequences, want)
    drafted = torch.cat(drafts)
    assert drafted.numel() and int(drafted.max()) < 40 and res.stats.accepted > 0
