"""compact_tree_kv: equality with the reference loop (tensors, sequences of tensors, per-row
prefixes), in-place safety, end-to-end with verify_tree's accepted_nodes, Hugging Face caches
through specdec.models.compact_tree_cache (DynamicCache of the installed transformers, and a legacy
key_cache/value_cache object), bad inputs."""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.reference as ref

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def random_paths(B: int, N: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random tree per row and a random root-to-node path in it, as TreeResult.accepted_nodes."""
    acc = torch.full((B, N), -1, dtype=torch.long)
    n = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, N)]
        node, path = int(torch.randint(0, N, (1,), generator=g)), []
        while node > 0:
            path.append(node)
            node = parents[node]
        path.reverse()
        acc[b, : len(path)] = torch.tensor(path, dtype=torch.long)
        n[b] = len(path)
    return acc, n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,H,N,D,prefix",
                         [(1, 1, 1, 1, 0), (3, 2, 7, 5, 4), (5, 4, 33, 8, 11), (2, 1, 2, 3, 0)])
def test_matches_reference(device, B, H, N, D, prefix):
    g = torch.Generator().manual_seed(B * 100 + N)
    acc, n = random_paths(B, N, g)
    kv = torch.randn(B, H, prefix + N + 3, D, generator=g)
    exp, exp_len = ref.compact_tree_kv(kv, acc, prefix)
    got = kv.clone().to(device)
    lengths = sk.compact_tree_kv(got, acc.to(device), prefix)
    assert torch.equal(got.cpu(), exp)
    assert torch.equal(lengths.cpu(), exp_len.cpu())
    assert torch.equal(lengths.cpu(), prefix + 1 + n)


@pytest.mark.parametrize("device", DEVICES)
def test_per_row_prefix_and_num_accepted(device):
    g = torch.Generator().manual_seed(1)
    B, H, N, D = 4, 2, 9, 3
    acc, n = random_paths(B, N, g)
    prefix = torch.tensor([0, 3, 1, 5])
    kv = torch.randn(B, H, 5 + N, D, generator=g)
    exp, exp_len = ref.compact_tree_kv(kv, acc, prefix, num_accepted=n)
    got = kv.clone().to(device)
    lengths = sk.compact_tree_kv(got, acc.to(device), prefix.to(device), num_accepted=n.to(device))
    assert torch.equal(got.cpu(), exp) and torch.equal(lengths.cpu(), exp_len.cpu())


def test_sequence_of_tensors_moves_each():
    g = torch.Generator().manual_seed(2)
    acc, _ = random_paths(3, 6, g)
    layers = [torch.randn(3, 2, 10, 4, generator=g) for _ in range(4)]
    expected = [ref.compact_tree_kv(t, acc, 2)[0] for t in layers]
    sk.compact_tree_kv(layers, acc, 2)
    for t, e in zip(layers, expected, strict=True):
        assert torch.equal(t, e)


def test_slots_outside_the_path_are_untouched():
    # Only slots prefix+1 .. prefix+n change: the prefix, the root and everything after stay.
    kv = torch.arange(12.0).reshape(1, 1, 12, 1)
    before = kv.clone()
    lengths = sk.compact_tree_kv(kv, torch.tensor([[3, 5, 6, -1, -1, -1, -1]]), 4)
    assert int(lengths[0]) == 8
    assert kv.flatten().tolist() == [0, 1, 2, 3, 4, 7, 9, 10, 8, 9, 10, 11]
    assert torch.equal(kv[..., :5, :], before[..., :5, :]) and torch.equal(kv[..., 8:, :], before[..., 8:, :])


def test_end_to_end_with_verify_tree():
    # The accepted path's entries land after the root in depth order: each slot holds the
    # position id its node had in the tree forward, so compacted ids must read prefix, prefix+1, ...
    g = torch.Generator().manual_seed(3)
    B, N, V, prefix = 6, 11, 5, 7
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 3, 3, 4, 6, 9]).expand(B, N).contiguous()
    tokens = torch.randint(0, V, (B, N), generator=g)
    p = torch.full((B, N, V), 1.0 / V)
    out = sk.verify_tree(tokens, parents, p, None, replacement=True, seed=0)
    pos = sk.tree_position_ids(parents, prefix).float()
    kv = torch.zeros(B, 1, prefix + N, 1)
    kv[:, 0, prefix:, 0] = pos
    lengths = sk.compact_tree_kv(kv, out.accepted_nodes, prefix)
    for b in range(B):
        L = int(lengths[b])
        assert kv[b, 0, prefix:L, 0].tolist() == list(range(prefix, L))


def test_dynamic_cache_is_compacted_and_cropped():
    transformers = pytest.importorskip("transformers")
    from specdec.models import compact_tree_cache  # Hugging Face caches: specdec's wrapper of the op

    g = torch.Generator().manual_seed(4)
    B, H, D, prefix, N = 2, 3, 4, 5, 7
    cache = transformers.DynamicCache()
    layers = []
    for layer in range(3):
        k = torch.randn(B, H, prefix + N, D, generator=g)
        v = torch.randn(B, H, prefix + N, D, generator=g)
        cache.update(k, v, layer)
        layers.append((k.clone(), v.clone()))
    acc = torch.tensor([[2, 5, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])
    lengths = compact_tree_cache(cache, acc, prefix)
    assert lengths.tolist() == [prefix + 3, prefix + 2]
    assert cache.get_seq_length() == prefix + 3  # cropped to the longest row
    for layer, (k, v) in enumerate(layers):
        ek = ref.compact_tree_kv(k, acc, prefix)[0][:, :, : prefix + 3]
        ev = ref.compact_tree_kv(v, acc, prefix)[0][:, :, : prefix + 3]
        lk, lv = (cache.layers[layer].keys, cache.layers[layer].values) if hasattr(cache, "layers") \
            else (cache.key_cache[layer], cache.value_cache[layer])
        assert torch.equal(lk, ek) and torch.equal(lv, ev)


class _LegacyCache:
    """The transformers 4.x attribute layout: key_cache / value_cache lists, crop(n)."""

    def __init__(self, keys, values):
        self.key_cache, self.value_cache = keys, values

    def get_seq_length(self):
        return self.key_cache[0].shape[2]

    def crop(self, n):
        keep = self.get_seq_length() + n if n < 0 else n
        self.key_cache = [k[:, :, :keep] for k in self.key_cache]
        self.value_cache = [v[:, :, :keep] for v in self.value_cache]


def test_legacy_cache_layout():
    from specdec.models import compact_tree_cache

    g = torch.Generator().manual_seed(5)
    k = torch.randn(1, 2, 9, 3, generator=g)
    v = torch.randn(1, 2, 9, 3, generator=g)
    cache = _LegacyCache([k.clone()], [v.clone()])
    acc = torch.tensor([[1, 3, 4, -1, -1, -1]])
    compact_tree_cache(cache, acc, 3)
    assert cache.get_seq_length() == 7
    assert torch.equal(cache.key_cache[0], ref.compact_tree_kv(k, acc, 3)[0][:, :, :7])
    assert torch.equal(cache.value_cache[0], ref.compact_tree_kv(v, acc, 3)[0][:, :, :7])


@pytest.mark.parametrize("kv,acc,prefix,kw,match", [
    (torch.zeros(1, 1, 8, 2), torch.tensor([[1, 2, -1]]), 0, {}, None),  # valid: control
    (torch.zeros(1, 8, 2), torch.tensor([[1, -1, -1]]), 0, {}, r"\[B, H, S, D\]"),
    (torch.zeros(2, 1, 8, 2), torch.tensor([[1, -1, -1]]), 0, {}, "batch size 2"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[1.0, -1, -1]]), 0, {}, "accepted_nodes must be int64"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[2, 1, -1]]), 0, {}, "increasing node indices"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[0, 1, -1]]), 0, {}, "increasing node indices"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[1, 3, -1]]), 0, {}, "increasing node indices"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[1, 2, -1]]), 6, {}, "too short"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[1, 2, -1]]), -1, {}, "prefix_len must be >= 0"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[1, 2, -1]]), 0, {"num_accepted": torch.tensor([3])},
     r"num_accepted must be in \[0, N-1\]"),
    (torch.zeros(1, 1, 8, 2), torch.tensor([[1, 2, -1]]), 0, {"num_accepted": torch.tensor([1, 1])},
     "num_accepted must be int"),
    ("not a cache", torch.tensor([[1, -1]]), 0, {}, "Hugging Face Cache"),
])
def test_bad_inputs(kv, acc, prefix, kw, match):
    if match is None:
        sk.compact_tree_kv(kv, acc, prefix, **kw)
        return
    with pytest.raises(ValueError, match=match):
        sk.compact_tree_kv(kv, acc, prefix, **kw)


def test_cache_needs_int_prefix():
    from specdec.models import compact_tree_cache

    cache = _LegacyCache([torch.zeros(1, 1, 6, 2)], [torch.zeros(1, 1, 6, 2)])
    with pytest.raises(ValueError, match="prefix_len must be an int"):
        compact_tree_cache(cache, torch.tensor([[1, -1]]), torch.tensor([2]))
