"""The one registration mechanism (specdec_kernels/ops/_dispatch.py): every op is one
``torch.ops.specdec`` op with one schema and one fake; Triton launchers are the CUDA kernels of the
ops where Triton is the chosen GPU implementation; a compiled kernel that Triton shadows stays
callable for ``use_backend("cuda")``. The ops' results on each backend are tested per family."""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import _backend
from specdec_kernels.ops import _dispatch

pytestmark = pytest.mark.skipif(not _backend.cpp_status()[0], reason="needs the compiled extension")

EVERY_OP = {
    "verify_chain", "verify_chain_block", "verify_chain_greedy", "sampling_probs", "gumbel_topk",
    "stochastic_beam_step", "verify_tree", "verify_tree_block", "verify_tree_greedy",
    "tree_attention_mask", "tree_position_ids", "draft_entropy", "divergence_forward",
    "divergence_backward", "tree_attention",
}


def test_every_op_is_registered_once_with_a_schema_and_a_fake():
    assert set(_dispatch.OPS) == EVERY_OP
    for name in EVERY_OP:
        qual = f"specdec::{name}"
        torch._C._dispatch_find_schema_or_throw(qual, "")  # raises if the schema is missing
        assert torch._library.simple_registry.singleton.find(qual).fake_impl.kernel is not None, name


def test_triton_is_the_cuda_kernel_where_chosen():
    # Registration only: no GPU is needed to check which implementation the CUDA key holds.
    for name, op in _dispatch.OPS.items():
        qual = f"specdec::{name}"
        compiled = name in _dispatch._compiled_cuda
        pref = _backend.CUDA_DEFAULTS.get(op.select_as, "cuda")
        want_triton = op.triton is not None and (pref == "triton" or not compiled)
        assert (name in _dispatch._triton_on_cuda) == want_triton, name
        if want_triton or compiled:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA"), name
    if _backend.cpp_status()[1]:  # built with CUDA kernels (CI): the C++ ones were captured
        assert {"verify_chain", "verify_chain_greedy", "gumbel_topk", "verify_tree"} <= set(
            _dispatch._compiled_cuda)
        assert "verify_tree_block" not in _dispatch._compiled_cuda  # no CUDA kernel for this rule


def _chain_args():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 4, 11, generator=g), -1)
    q = torch.softmax(torch.randn(3, 3, 11, generator=g), -1)
    x = torch.multinomial(q.reshape(-1, 11), 1, generator=g).reshape(3, 3)
    return sk.contract.chain.verify_chain_args(x, p, q, torch.tensor([3, 0, 2]), 5, 0)


def test_a_shadowed_compiled_kernel_stays_callable():
    # On a GPU, where Triton is the chosen implementation, _dispatch registers it over the C++ CUDA
    # kernel and keeps the C++ one (torch.library.get_kernel) for use_backend("cuda"). The same
    # mechanism on the CPU key, where it can run here: shadow the C++ cpu kernel with a kernel that
    # fails, then call the captured one with the canonical arguments (None optionals, bools).
    args = _chain_args()
    want = sk.reference.chain.op_verify_chain(*args)
    captured = torch.library.get_kernel("specdec::verify_chain", "CPU")
    lib = torch.library.Library("specdec", "IMPL")
    try:
        def shadow(*a):
            raise AssertionError("the shadowing kernel ran")

        lib.impl("verify_chain", shadow, "CPU")
        with pytest.raises(AssertionError, match="shadowing kernel ran"):  # control: it is shadowed
            torch.ops.specdec.verify_chain(*args, False)
        got = captured.call_boxed(torch._C._dispatch_keyset_full(), *args, False)
        nd_none = args._replace(num_draft=None)
        got_none = captured.call_boxed(torch._C._dispatch_keyset_full(), *nd_none, False)
    finally:
        lib._destroy()
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(got_none, sk.reference.chain.op_verify_chain(*nd_none), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(torch.ops.specdec.verify_chain(*args, False)[0], want[0])  # restored


def test_forced_backend_runs_that_implementation(monkeypatch):
    args = _chain_args()
    calls = []
    real = sk.reference.chain.op_verify_chain
    monkeypatch.setattr(sk.reference.chain, "op_verify_chain", lambda *a: calls.append(1) or real(*a))
    _dispatch.call("verify_chain", args)
    assert calls == []  # the cpu kernel by default
    with sk.use_backend("reference"):
        _dispatch.call("verify_chain", args)
    assert calls == [1]
    _dispatch.call("verify_chain", args, backend="reference")
    assert calls == [1, 1]


def test_every_public_op_is_a_few_lines():
    # The public functions normalise through their contract and make one dispatched call; the
    # backend choice lives in _dispatch, not in if/elif ladders per op.
    import inspect

    for fn in (sk.verify_chain, sk.verify_chain_greedy, sk.sampling_probs, sk.gumbel_topk,
               sk.stochastic_beam_step, sk.verify_tree, sk.verify_tree_greedy, sk.tree_attention_mask,
               sk.tree_position_ids, sk.draft_entropy, sk.tree_attention):
        src = inspect.getsource(fn)
        body = src[src.index('"""', src.index('"""') + 3) + 3:]  # after the docstring
        code = [line for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
        assert len(code) <= 8, f"{fn.__name__}: {len(code)} lines"
        assert "backend" not in body, fn.__name__
