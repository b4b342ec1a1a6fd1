"""The pure, batched functions of a round (specdec.plans) and the adapter's ragged masks, checked
against plain loops, plus the policies' row selection (finished requests leave the batch)."""

from __future__ import annotations

import pytest
import torch
from specdec.adapter import ModelAdapter, SequenceCache, ragged_causal_visible, ragged_tree_visible
from specdec.plans import Trees, append_children, kv_keep_plan, level_children, roots

import specdec_kernels as sk
from specdec_kernels.policies import AdaEDL


def _tree_rows(t: Trees) -> list[tuple[list[int], list[int]]]:
    n = t.num_nodes.tolist()
    return [(t.tokens[b, : n[b]].tolist(), t.parents[b, : n[b]].tolist()) for b in range(len(n))]


def test_append_children_packs_each_row_in_candidate_order():
    t = roots(torch.tensor([7, 8, 9]))
    kids = torch.tensor([[4, -1, 5], [-1, -1, -1], [1, 2, 3]])
    t = append_children(t, kids, torch.zeros_like(kids))
    assert _tree_rows(t) == [([7, 4, 5], [-1, 0, 0]), ([8], [-1]), ([9, 1, 2, 3], [-1, 0, 0, 0])]
    # a second level: row 0's nodes 1, 2 get children; row 2 only node 3; padding stays -1
    kids, par = level_children(torch.tensor([[[6, 7], [8, -1], [0, 0]], [[0, 0], [0, 0], [0, 0]],
                                             [[5, -1], [0, 0], [0, 0]]]),
                               torch.tensor([1, 1, 3]), torch.tensor([2, 0, 1]))
    t = append_children(t, kids, par)
    assert _tree_rows(t) == [([7, 4, 5, 6, 7, 8], [-1, 0, 0, 1, 1, 2]), ([8], [-1]),
                             ([9, 1, 2, 3, 5], [-1, 0, 0, 0, 3])]
    assert t.tokens.shape == (3, 6) and t.tokens[1, 1:].eq(-1).all() and t.parents[2, 5] == -1
    # the kernels accept the result as a valid padded tree
    sk.tree_attention_mask(t.parents, num_nodes=t.num_nodes, check=True)


def test_append_children_refuses_mismatched_shapes():
    t = roots(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="child_tokens and child_parents"):
        append_children(t, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="3 rows but there are 2 trees"):
        append_children(t, torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long))


def test_kv_keep_plan_keeps_the_cached_prefix_of_the_path():
    acc = torch.tensor([[1, 2, 3, -1], [2, 5, -1, -1], [1, 4, 6, -1], [-1, -1, -1, -1]])
    n = torch.tensor([3, 2, 3, 0])
    fwd = torch.tensor([2, 6, 5, 3])  # row 0: node 3 was drafted last, never forwarded
    root = torch.tensor([10, 4, 7, 0])
    plan = kv_keep_plan(acc, n, fwd, root)
    assert plan.nodes.tolist() == [[1, 2, -1, -1], [2, 5, -1, -1], [1, 4, -1, -1], [-1, -1, -1, -1]]
    assert plan.num_kept.tolist() == [2, 2, 2, 0]
    assert plan.moves.tolist() == [False, True, True, False]
    assert plan.length.tolist() == [13, 7, 10, 1]


def test_kv_keep_plan_drives_compact_tree_kv():
    # the plan's nodes move exactly the kept entries behind each row's root
    B, S = 2, 12
    kv = torch.arange(B * S, dtype=torch.float32).reshape(B, 1, S, 1).clone()
    acc = torch.tensor([[2, 4, -1, -1, -1], [1, 2, 3, -1, -1]])
    plan = kv_keep_plan(acc, torch.tensor([2, 3]), torch.tensor([4, 2]), torch.tensor([3, 5]))
    sk.compact_tree_kv(kv, plan.nodes, torch.tensor([3, 5]), num_accepted=plan.num_kept)
    assert kv[0, 0, 3:6, 0].tolist() == [3.0, 5.0, 7.0]  # root 3, then nodes 2 and 4
    assert kv[1, 0, 5:8, 0].tolist() == [12 + 5.0, 12 + 6.0, 12 + 7.0]  # nodes 1, 2 already in place


def test_ragged_masks_match_loops():
    write = torch.tensor([0, 3, 5])
    vis = ragged_causal_visible(write, 2, 8)
    for b in range(3):
        for i in range(2):
            assert vis[b, i].tolist() == [s <= write[b] + i for s in range(8)]
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, -1]])
    anc = sk.tree_attention_mask(parents, num_nodes=torch.tensor([4, 3]))
    root = torch.tensor([2, 5])
    vis = ragged_tree_visible(root, anc, 10)
    for b in range(2):
        for i in range(4):
            want = [s < root[b] or (0 <= s - root[b] < 4 and bool(anc[b, i, s - root[b]])) for s in range(10)]
            assert vis[b, i].tolist() == want


def test_sequence_cache_is_a_model_adapter():
    from tiny_models import greedy_target

    assert isinstance(SequenceCache(greedy_target()), ModelAdapter)


def test_policy_select_rows_keeps_each_requests_state():
    pol = AdaEDL(max_len=4)
    pol.begin_round(3)
    pol.should_stop(torch.randn(3, 16))
    pol.update(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 1]))
    before = pol.threshold.clone()
    pol.select_rows([2, 0])
    assert pol.threshold.tolist() == [before[2].item(), before[0].item()]
    assert pol.drafted.shape == (2,) and pol.acceptance.shape == (2,)
    assert pol.should_stop(torch.randn(2, 16)).shape == (2,)
    with pytest.raises(ValueError, match="rows must be indices"):
        pol.select_rows([5])
