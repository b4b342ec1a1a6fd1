"""End to end with a Hugging Face model (a tiny random Llama built here, nothing downloaded): one
forward over a whole tree with tree_attention_bias + tree_position_ids gives every node the logits
of running its own path alone; after verify_tree and compact_tree_kv (through specdec's
compact_tree_cache) the cache continues exactly like a cache that saw only the prefix and the
accepted path."""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk

transformers = pytest.importorskip("transformers")
# past_key_values warns from transformers 5.2x on; Hugging Face caches are compacted by specdec's wrapper
from specdec.models import cache_kwarg, compact_tree_cache  # noqa: E402

PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 6]  # 9 nodes, depth 4, siblings at several levels


def tiny_llama(impl: str):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = impl
    return transformers.LlamaForCausalLM(cfg).eval()


def path_to(parents: list[int], i: int) -> list[int]:
    out = []
    while i >= 0:
        out.append(i)
        i = parents[i]
    return out[::-1]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_tree_forward_equals_per_path_forwards(impl):
    model = tiny_llama(impl)
    g = torch.Generator().manual_seed(1)
    P = 5
    prefix = torch.randint(0, 40, (1, P), generator=g)
    parents = torch.tensor([PARENTS])
    tokens = torch.randint(0, 40, (1, len(PARENTS)), generator=g)
    with torch.no_grad():
        cache = transformers.DynamicCache()
        model(prefix, **{cache_kwarg(model): cache}, use_cache=True)
        out = model(tokens, **{cache_kwarg(model): cache}, use_cache=True,
                    attention_mask=sk.tree_attention_bias(parents, P),
                    position_ids=sk.tree_position_ids(parents, P)).logits
        for i in range(len(PARENTS)):
            seq = torch.cat([prefix, tokens[:, path_to(PARENTS, i)]], 1)
            torch.testing.assert_close(out[:, i], model(seq).logits[:, -1], rtol=1e-5, atol=1e-5)


def test_verify_then_compact_continues_like_the_accepted_sequence():
    model = tiny_llama("sdpa")
    g = torch.Generator().manual_seed(2)
    P, N = 4, len(PARENTS)
    prefix = torch.randint(0, 40, (1, P), generator=g)
    parents = torch.tensor([PARENTS])
    with torch.no_grad():
        cache = transformers.DynamicCache()
        model(prefix[:, :-1], **{cache_kwarg(model): cache}, use_cache=True)  # the root is not cached yet
        root_pos = P - 1
        # Draft the tree from the model itself (distinct siblings by Gumbel-top-k) so paths get accepted.
        tokens = torch.zeros(1, N, dtype=torch.long)
        tokens[0, 0] = prefix[0, -1]
        for n in range(N):
            kids = [i for i, p in enumerate(PARENTS) if p == n]
            if kids:
                seq = torch.cat([prefix[:, :-1], tokens[:, path_to(PARENTS, n)]], 1)
                logits = model(seq).logits[0, -1]
                tokens[0, kids] = sk.gumbel_topk(logits[None], len(kids), seed=n).tokens[0]
        out = model(tokens, **{cache_kwarg(model): cache}, use_cache=True,
                    attention_mask=sk.tree_attention_bias(parents, root_pos),
                    position_ids=sk.tree_position_ids(parents, root_pos))
        p = torch.softmax(out.logits.float(), -1)
        q = p.clone()  # drafted from the target itself: first children are always accepted
        res = sk.verify_tree(tokens, parents, p, q, seed=0)
        n = int(res.num_accepted[0])
        assert n >= 1
        lengths = compact_tree_cache(cache, res.accepted_nodes, root_pos)
        assert int(lengths[0]) == cache.get_seq_length() == root_pos + 1 + n
        # Next step: feed the emitted token; the compacted cache must act like prefix + path.
        nxt = res.tokens[:, n:n + 1]
        cont = model(nxt, **{cache_kwarg(model): cache}, use_cache=True).logits[:, -1]
        accepted = tokens[:, [0] + res.accepted_nodes[0, :n].tolist()]
        fresh = model(torch.cat([prefix[:, :-1], accepted, nxt], 1)).logits[:, -1]
        torch.testing.assert_close(cont, fresh, rtol=1e-5, atol=1e-5)
