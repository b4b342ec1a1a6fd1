"""verify_chain / verify_chain_greedy: the op registration (opcheck of schema, fake impls and
dispatch), torch.compile(fullgraph=True), CUDA graph capture and replay."""

from __future__ import annotations

import pytest
import torch
from chain_cases import _varied_case, make_greedy
from helpers import capture_cuda_graph, to_device

import specdec_kernels as sk
import specdec_kernels.reference as ref
from specdec_kernels import VERIFY_CHAIN_OFFSET_STRIDE as STRIDE
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "chain"  # conftest: the triton params need specdec_kernels.triton.chain


# ----------------------------------------------------------------------------------------------
# torch.compile, fake implementations, CUDA graphs
# ----------------------------------------------------------------------------------------------


def test_opcheck_chain_ops():
    # Schema, fake (meta) implementation and dispatch registration are consistent.
    x, p, q = _varied_case(B=3, V=7, K=2)
    s = torch.arange(3)
    o = torch.zeros(3, dtype=torch.long)
    nd = torch.tensor([0, 1, 2])
    torch.library.opcheck(torch.ops.specdec.verify_chain.default, (x, p, q, nd, s, o, True))
    torch.library.opcheck(torch.ops.specdec.verify_chain_greedy.default, (x, p, None))


def test_torch_compile_fullgraph_cpu():
    # aot_eager traces with fake tensors (the registered fake impls) without C++ codegen: cheap.
    x, p, q = _varied_case(B=4, V=7, K=3)
    s = torch.arange(4)
    o = torch.zeros(4, dtype=torch.long)

    def f(x, p, q, s, o):
        tokens, n = torch.ops.specdec.verify_chain(x, p, q, None, s, o, False)
        return tokens, n, torch.ops.specdec.verify_chain_greedy(x, p, None)[0]

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    for off in (0, STRIDE):
        o.fill_(off)
        assert_same(cf(x, p, q, s, o), f(x, p, q, s, o))


@pytest.mark.cuda
def test_cuda_graph_capture_replay(cuda_backend):
    d = cuda_backend.device
    x, p, q = to_device(_varied_case(), d)
    B = x.shape[0]
    seed = torch.arange(B, device=d) * 13 + 1
    offset = torch.zeros(B, dtype=torch.long, device=d)
    nd = torch.randint(0, x.shape[1] + 1, (B,), generator=torch.Generator().manual_seed(0)).to(d)

    def step():
        return sk.verify_chain(x, p, q, num_draft=nd, seed=seed, offset=offset, check=False)

    graph, static = capture_cuda_graph(step)
    outs = []
    for r in range(3):
        offset.fill_(r * STRIDE)  # in place: the captured kernels read the new offset
        graph.replay()
        torch.cuda.synchronize()
        eager = sk.verify_chain(x, p, q, num_draft=nd, seed=seed, offset=offset.clone())
        assert_same(static, eager)
        outs.append(static.tokens.clone())
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.cuda
def test_cuda_graph_capture_greedy(cuda_backend):
    d = cuda_backend.device
    inputs = to_device(make_greedy(33, 5, 111, seed=0, ragged=True), d)
    graph, static = capture_cuda_graph(lambda: sk.verify_chain_greedy(**inputs, check=False))
    inputs["target_logits"].copy_(inputs["target_logits"].flip(-1))
    graph.replay()
    torch.cuda.synchronize()
    assert_same(static, ref.verify_chain_greedy(**to_device(inputs, "cpu")))
