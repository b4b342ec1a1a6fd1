"""The reference Philox4x32-10 and the draw layout: the spec of every backend's random numbers.

The C++ (csrc/common/philox.h) and Triton implementations are checked against this reference
indirectly, through bit-exact equality of the ops in test_chain_equality.py; here the reference itself is
pinned to the published Random123 known-answer vectors and to the documented layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from specdec_kernels.reference import _philox as ph
from specdec_kernels.reference.chain import sample_race

M32 = 0xFFFFFFFF


def _t(v):
    return torch.tensor(v, dtype=torch.int64)


# Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key, expected output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    out = ph.philox4x32_10(*(_t(c) for c in counter), *(_t(k) for k in key))
    assert tuple(int(w) for w in out) == expected


def test_philox_known_answers_batched():
    # The same vectors evaluated as one broadcast batch: the int64 emulation must not mix lanes.
    cols = [_t([kat[0][i] for kat in KAT]) for i in range(4)]
    keys = [_t([kat[1][i] for kat in KAT]) for i in range(2)]
    out = torch.stack(ph.philox4x32_10(*cols, *keys), dim=-1)
    assert out.tolist() == [list(kat[2]) for kat in KAT]


def test_draw_layout_matches_documented_counter():
    # philox.h: key = (seed lo, seed hi); counter = (element >> 2, stream, draw lo, draw hi) with
    # draw = offset + slot; word = output[element & 3]. 64-bit seed/offset exercise the high words.
    seed, offset, slot, stream = 0x0123456789ABCDEF, (1 << 32) - 1, 1, 7
    element = torch.arange(10)
    words = ph.draw_words(_t(seed), _t(offset), slot, _t(stream), element)
    draw = offset + slot
    for e in range(10):
        out = ph.philox4x32_10(_t(e >> 2), _t(stream), _t(draw & M32), _t(draw >> 32),
                               _t(seed & M32), _t(seed >> 32))
        assert int(words[e]) == int(out[e & 3]), e


def test_words_are_uint32():
    w = ph.draw_words(_t(2**63 - 1), _t(2**62), 1, _t(M32), torch.arange(4096))
    assert w.dtype == torch.int64
    assert int(w.min()) >= 0 and int(w.max()) <= M32


def test_uniform_formula_exact():
    # ((w >> 9) + 0.5) * 2^-23 has at most 24 significant bits, so float32 holds it exactly.
    w = torch.tensor([0, 1, 511, 512, 0x7FFFFFFF, 0x80000000, M32 - 511, M32], dtype=torch.int64)
    w = torch.cat([w, ph.draw_words(_t(3), _t(0), 0, _t(0), torch.arange(1000))])
    u = ph.words_to_uniform(w)
    assert u.dtype == torch.float32
    exact = (((w >> 9).double() + 0.5) * 2.0**-23)
    assert torch.equal(u.double(), exact)
    assert float(u[0]) == 2.0**-24 and float(u[7]) == 1 - 2.0**-24


def test_uniform_open_interval():
    # Sizes here stay below torch's intra-op grain (32768): on a loaded 2-core box the thread pool
    # can turn a 10 ms elementwise pass into seconds.
    u = ph.draw_uniform(_t(11), _t(0), 0, _t(0), torch.arange(1 << 14))
    assert bool((u > 0).all()) and bool((u < 1).all())
    # -log(u) must be finite and positive: the exponential race relies on it.
    e = -torch.log(u)
    assert bool(torch.isfinite(e).all()) and bool((e > 0).all())


def test_uniform_ks():
    # Fixed seed: deterministic; the threshold (p < 1e-4) is far from what a correct generator gets.
    u = ph.draw_uniform(_t(20240501), _t(0), 0, _t(0), torch.arange(1 << 14)).double().numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    # Each of the 4 lanes of a Philox block separately (a lane-selection bug would show here).
    for lane in range(4):
        assert stats.kstest(u[lane::4], "uniform").pvalue > 1e-4, lane


def test_uniform_pairs_independent():
    # Consecutive elements (same block and across blocks) should look independent: chi-square on a
    # 8x8 grid of (u_i, u_{i+1}).
    u = ph.draw_uniform(_t(77), _t(5), 1, _t(3), torch.arange(1 << 14)).numpy()
    a = np.minimum((u[:-1] * 8).astype(int), 7)
    b = np.minimum((u[1:] * 8).astype(int), 7)
    counts = np.bincount(a * 8 + b, minlength=64)
    stat = ((counts - counts.sum() / 64) ** 2 / (counts.sum() / 64)).sum()
    assert stat < stats.chi2.ppf(1 - 1e-4, 63)


@pytest.mark.parametrize(
    "other",
    [
        dict(seed=2),
        dict(seed=1 + (1 << 32)),  # differs only in the key's high word
        dict(offset=1),
        dict(offset=1 << 32),  # differs only in the counter's high draw word
        dict(slot=1),
        dict(stream=1),
        dict(stream=1 << 31),
    ],
    ids=["seed", "seed_hi", "offset", "offset_hi", "slot", "stream", "stream_hi"],
)
def test_distinct_inputs_give_distinct_words(other):
    base = dict(seed=1, offset=0, slot=0, stream=0)
    args = {**base, **other}
    e = torch.arange(256)
    w0 = ph.draw_words(_t(base["seed"]), _t(base["offset"]), base["slot"], _t(base["stream"]), e)
    w1 = ph.draw_words(_t(args["seed"]), _t(args["offset"]), args["slot"], _t(args["stream"]), e)
    # Independent 32-bit words collide with probability 2^-32 each: demand no collision at all.
    assert int((w0 == w1).sum()) == 0
    # Elements within one draw are distinct words too.
    assert len(set(w0.tolist())) == 256


def test_offset_and_slot_share_one_counter():
    # draw = offset + slot: a call at offset o uses draws o and o + 1, which is why ops document an
    # offset stride (VERIFY_CHAIN_OFFSET_STRIDE = 2) instead of advancing the offset by 1.
    e = torch.arange(16)
    a = ph.draw_words(_t(9), _t(4), 1, _t(0), e)
    b = ph.draw_words(_t(9), _t(5), 0, _t(0), e)
    assert torch.equal(a, b)


def _rows_match_scalar_calls(element):
    seeds = _t([[1], [2], [2**40]])
    offs = _t([[0], [6], [2**33]])
    streams = _t([[0], [5], [0]])
    u = ph.draw_uniform(seeds, offs, 1, streams, element)
    assert u.shape == (3, 9)
    for b in range(3):
        assert torch.equal(u[b], ph.draw_uniform(seeds[b, 0], offs[b, 0], 1, streams[b, 0], torch.arange(9)))


def test_broadcast_over_rows():
    # seed/offset/stream per row [B, 1], elements [B, V]: row b must equal its own scalar call.
    _rows_match_scalar_calls(torch.arange(9).expand(3, 9))


def test_broadcast_over_rows_element_1d():
    _rows_match_scalar_calls(torch.arange(9))


def test_race_law():
    # The exponential race argmax_x r(x) / -log(u_x) has law r / sum(r) (unnormalised r is fine;
    # zero entries never win). Each of N streams is one sample; chi-square at p = 1e-4.
    r = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.25, 0.25])
    chunk, n = 4000, 12_000  # chunks keep each elementwise op below the intra-op grain
    counts = torch.zeros(6, dtype=torch.float64)
    for start in range(0, n, chunk):
        streams = torch.arange(start, start + chunk)[:, None]
        u = ph.draw_uniform(_t(123), _t(0), 1, streams, torch.arange(6).expand(chunk, 6))
        win = torch.argmax(ph.race_keys(r.expand(chunk, 6), u), dim=-1)
        counts += torch.bincount(win, minlength=6).double()
    assert counts[1] == 0
    pi = (r / r.sum()).double()
    keep = pi > 0
    stat = float((((counts - n * pi) ** 2)[keep] / (n * pi[keep])).sum())
    assert stat < stats.chi2.ppf(1 - 1e-4, int(keep.sum()) - 1), (stat, counts.tolist())


def test_sample_race_edge_cases():
    u = ph.draw_uniform(_t(1), _t(0), 1, _t(0), torch.arange(4))
    assert sample_race(torch.zeros(4), u) == -1  # zero mass: the callers' fallback signal
    assert sample_race(torch.tensor([0.0, 0.0, 3.0, 0.0]), u) == 2  # one-hot always wins
