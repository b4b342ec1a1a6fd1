"""tree_attention: every backend against the float64 reference, and the reference against PyTorch's
scaled_dot_product_attention on the dense mask it replaces.

Tolerance (flash-attention's rule, docs/design.md): a backend's error against the float64 reference may
be at most ``2 * err_sdpa + eps``, where err_sdpa is what PyTorch's own SDPA with the dense mask gets
in the same dtype on the same inputs, so the bound follows the dtype instead of a hand-tuned atol.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import capture_cuda_graph

import specdec_kernels as sk
from specdec_kernels.reference.attention import tree_attention as ref_tree_attention
from specdec_kernels.reference.attention import unpack_bits
from specdec_kernels.reference.tree import pack_bits

TRITON_FAMILY = "attention"

EPS = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_parents(B: int, N: int, g: torch.Generator) -> torch.Tensor:
    parents = torch.full((B, N), -1, dtype=torch.long)
    for b in range(B):
        for i in range(1, N):
            parents[b, i] = int(torch.randint(0, i, (1,), generator=g))
    return parents


def make(B, Hq, Hkv, N, D, L, dtype, device, lens=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    parents = random_parents(B, N, g)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    args = dict(
        q=rnd(B, Hq, N, D), k_cache=rnd(B, Hkv, L, D), v_cache=rnd(B, Hkv, L, D),
        cache_seqlens=torch.tensor(lens if lens is not None else [L] * B, device=device),
        k_tree=rnd(B, Hkv, N, D), v_tree=rnd(B, Hkv, N, D),
        tree_mask=sk.tree_attention_mask(parents.to(device), packed=True),
    )
    return args, parents


def sdpa_dense(a, parents):
    """What an engine does today: the dense [B, 1, N, L + N] mask and SDPA (GQA by repeating KV)."""
    q = a["q"]
    B, Hq, N, _ = q.shape
    Hkv, L = a["k_cache"].shape[1:3]
    prefix = torch.arange(L, device=q.device)[None] < a["cache_seqlens"][:, None]
    tree = sk.tree_attention_mask(parents.to(q.device))
    visible = torch.cat([prefix[:, None].expand(B, N, L), tree], -1)
    k = torch.cat([a["k_cache"], a["k_tree"]], 2).repeat_interleave(Hq // Hkv, 1)
    v = torch.cat([a["v_cache"], a["v_tree"]], 2).repeat_interleave(Hq // Hkv, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None])


def check_close(out, a, parents):
    ref = ref_tree_attention(**a).double()
    ref64 = ref_tree_attention(**{k: (v.double() if v.is_floating_point() else v) for k, v in a.items()})
    err = (out.double() - ref64).abs().max().item()
    err_sdpa = (sdpa_dense(a, parents).double() - ref64).abs().max().item()
    bound = 2 * err_sdpa + EPS[a["q"].dtype]
    assert err <= bound, f"max error {err:.3g} > bound {bound:.3g} (sdpa's own error {err_sdpa:.3g})"
    assert out.dtype == a["q"].dtype and out.shape == a["q"].shape
    return ref


CASES = [
    # B, Hq, Hkv, N, D, L, lens
    (1, 2, 2, 1, 16, 40, None),        # N = 1: plain decode
    (2, 4, 2, 5, 16, 37, [37, 3]),     # GQA, ragged prefixes
    (3, 4, 1, 9, 32, 130, [0, 65, 130]),  # MQA, an empty prefix
    (1, 2, 2, 33, 24, 200, None),      # two mask words, D not a power of two
    (2, 2, 1, 64, 64, 96, [96, 17]),   # the largest tree
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-H{}x{}-N{}-D{}-L{}".format(*c[:6]))
def test_matches_reference_and_sdpa(backend, case, dtype):
    B, Hq, Hkv, N, D, L, lens = case
    if backend.interpreted and dtype != torch.float32 and N > 16:
        pytest.skip("interpreter: large 16-bit cases covered in float32")
    a, parents = make(B, Hq, Hkv, N, D, L, dtype, backend.device, lens)
    out = sk.tree_attention(**a)
    check_close(out, a, parents)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-prefix", "blocked-prefix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_backend_both_prefix_paths(monkeypatch, fused, dtype):
    """The cpu backend runs the prefix through torch's fused flash op when torch has it, else a
    blocked online softmax (chunk 16 here, so several blocks): both paths meet the bound."""
    from specdec_kernels.reference import attention as ref_attention

    if fused and ref_attention._FLASH_CPU is None:
        pytest.skip("this torch has no fused CPU flash attention op")
    if not fused:
        monkeypatch.setattr(ref_attention, "_FLASH_CPU", None)
    for case in CASES:
        B, Hq, Hkv, N, D, L, lens = case
        a, parents = make(B, Hq, Hkv, N, D, L, dtype, "cpu", lens, seed=3)
        out = ref_attention.tree_attention_cpu(**a, scale=a["q"].shape[-1] ** -0.5, chunk=16)
        check_close(out, a, parents)


def test_reference_equals_sdpa_float64():
    a, parents = make(2, 4, 2, 7, 16, 50, torch.float32, "cpu", [50, 9])
    a64 = {k: (v.double() if v.is_floating_point() else v) for k, v in a.items()}
    torch.testing.assert_close(ref_tree_attention(**a64), sdpa_dense(a64, parents), rtol=1e-12, atol=1e-12)


def test_long_prefix_split_kv(backend):
    """Prefixes long enough for several splits (the Triton launcher splits past 4 tiles)."""
    L = 1100 if backend.interpreted else 5000
    a, parents = make(1, 2, 1, 8, 16, L, torch.float32, backend.device, [L - 3])
    check_close(sk.tree_attention(**a), a, parents)


def test_entries_beyond_seqlen_are_never_read(backend):
    a, parents = make(2, 2, 2, 4, 16, 48, torch.float32, backend.device, [10, 0])
    ref = sk.tree_attention(**a)
    for t in ("k_cache", "v_cache"):
        a[t][0, :, 10:] = float("nan")
        a[t][1] = float("nan")
    torch.testing.assert_close(sk.tree_attention(**a), ref, rtol=0, atol=0)


def test_scale_and_strided_cache(backend):
    """A custom scale, and a cache that is a slice of a longer one (Hugging Face's cache[:, :, :L])."""
    a, parents = make(1, 4, 2, 6, 32, 80, torch.float32, backend.device, [70])
    big_k = torch.randn(1, 2, 100, 32, device=backend.device)
    big_v = torch.randn(1, 2, 100, 32, device=backend.device)
    big_k[:, :, :80] = a["k_cache"]
    big_v[:, :, :80] = a["v_cache"]
    want = sk.reference.tree_attention(**a, scale=0.3)
    a["k_cache"], a["v_cache"] = big_k[:, :, :80], big_v[:, :, :80]
    torch.testing.assert_close(sk.tree_attention(**a, scale=0.3), want, rtol=1e-5, atol=1e-5)


def test_chain_mask_equals_causal_attention(backend):
    """A chain's tree mask is the causal mask: tree attention = causal attention over prefix + chain."""
    B, H, N, D, L = 1, 2, 6, 16, 20
    a, _ = make(B, H, H, N, D, L, torch.float32, backend.device)
    a["tree_mask"] = sk.tree_attention_mask(torch.arange(-1, N - 1, device=backend.device)[None], packed=True)
    k = torch.cat([a["k_cache"], a["k_tree"]], 2)
    v = torch.cat([a["v_cache"], a["v_tree"]], 2)
    causal = torch.ones(N, L + N, dtype=torch.bool, device=backend.device).tril(L)
    want = F.scaled_dot_product_attention(a["q"], k, v, attn_mask=causal)
    torch.testing.assert_close(sk.tree_attention(**a), want, rtol=1e-5, atol=1e-5)


def test_unpack_inverts_pack():
    g = torch.Generator().manual_seed(3)
    for n in (1, 31, 32, 33, 64):
        bits = torch.rand(2, n, n, generator=g) < 0.5
        words = pack_bits(bits)
        assert torch.equal(unpack_bits(words, n), bits)


@pytest.mark.parametrize("mutate, word", [
    (lambda a: a.update(q=a["q"][:, :, :0]), "1..64"),
    (lambda a: a.update(k_cache=a["k_cache"].double()), "float32, float16 or bfloat16"),
    (lambda a: a.update(v_cache=a["v_cache"].half()), "q's dtype"),
    (lambda a: a.update(k_tree=a["k_tree"][:, :, :2]), "k_tree must be"),
    (lambda a: a.update(v_cache=a["v_cache"][:, :, :5]), "v_cache must be"),
    (lambda a: a.update(q=torch.randn(2, 3, 4, 16)), "multiple of the KV heads"),
    (lambda a: a.update(cache_seqlens=torch.tensor([1.0, 2.0])), "cache_seqlens"),
    (lambda a: a.update(cache_seqlens=torch.tensor([3])), "cache_seqlens"),
    (lambda a: a.update(cache_seqlens=torch.tensor([3, 99])), "cache_seqlens[1] = 99"),
    (lambda a: a.update(cache_seqlens=torch.tensor([-1, 2])), "cache_seqlens[0] = -1"),
    (lambda a: a.update(tree_mask=a["tree_mask"].long()), "packed int32"),
    (lambda a: a.update(tree_mask=torch.zeros(2, 4, 1, dtype=torch.int32)), "see itself"),
    (lambda a: a.update(q=a["q"][..., None]), "4-D"),
    (lambda a: a.update(scale=-1.0), "scale"),
])
def test_bad_inputs_raise(mutate, word):
    a, _ = make(2, 2, 2, 4, 16, 12, torch.float32, "cpu")
    mutate(a)
    with pytest.raises(ValueError) as e:
        sk.tree_attention(**a)
    assert word in str(e.value), str(e.value)


def test_too_many_nodes_raise():
    a, _ = make(1, 1, 1, 65, 8, 4, torch.float32, "cpu")
    with pytest.raises(ValueError, match="1..64"):
        sk.tree_attention(**a)


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay(cuda_backend):
    """No host sync and no allocation outside the graph pool: the op captures and replays exactly."""
    a, _ = make(2, 8, 2, 9, 64, 3000, torch.float16, "cuda", [3000, 1200])
    eager = sk.tree_attention(**a, check=False)
    g, out = capture_cuda_graph(lambda: sk.tree_attention(**a, check=False))
    a["q"].mul_(1.0)  # inputs unchanged: the replay must reproduce the eager result bit for bit
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
