"""gumbel_topk / stochastic_beam_step: the op registration (opcheck of schema, fake impls and
dispatch), torch.compile(fullgraph=True) on CPU and CUDA, CUDA graph capture and replay."""

from __future__ import annotations

import pytest
import torch
from gumbel_cases import (
    _dead_mask,
    _need_cpp_gumbel,
    _varied_beam,
    _varied_topk,
    assert_beam_same,
    assert_topk_same,
    make_logits,
)
from helpers import capture_cuda_graph, to_device

import specdec_kernels as sk
import specdec_kernels.reference as ref
import specdec_kernels.testing as skt
from specdec_kernels import GUMBEL_OFFSET_STRIDE as STRIDE

TRITON_FAMILY = "gumbel"  # conftest: the triton params need specdec_kernels.triton.gumbel


# ----------------------------------------------------------------------------------------------
# torch.compile, fake implementations, CUDA graphs
# ----------------------------------------------------------------------------------------------


def _raw_args(device="cpu"):
    x = make_logits((3, 7), seed=0, masked=0.2)
    xb, phi, G = _varied_beam(B=3, W=2, V=7)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    t = torch.tensor([0.5, 1.0, 2.0])
    s = torch.arange(3) * 5 + 1
    o = torch.zeros(3, dtype=torch.long)
    return to_device((x, xb, phi, G, mask, t, s, o), device)


def test_opcheck_gumbel_ops():
    # Schema, fake (meta) implementation and dispatch registration are consistent.
    _need_cpp_gumbel()
    x, xb, phi, G, mask, t, s, o = _raw_args()
    torch.library.opcheck(torch.ops.specdec.gumbel_topk.default, (x, t, 3, s, o, True))
    torch.library.opcheck(torch.ops.specdec.gumbel_topk.default, (x, t, 7, s, o, False))
    beam = torch.ops.specdec.stochastic_beam_step.default
    torch.library.opcheck(beam, (xb, phi, G, mask, 4, t, s, o, True))
    torch.library.opcheck(beam, (xb, phi, G, None, 20, t, s, o, False))


def _compile_check(device, backend):
    x, xb, phi, G, mask, t, s, o = _raw_args(device)

    def f(x, xb, phi, G, mask, t, s, o):
        a = torch.ops.specdec.gumbel_topk(x, t, 3, s, o, False)
        b = torch.ops.specdec.stochastic_beam_step(xb, phi, G, mask, 4, t, s, o, True)
        return (*a, *b, a[2] * 2.0)

    cf = torch.compile(f, fullgraph=True, backend=backend)
    for off in (0, STRIDE):
        o.fill_(off)
        skt.assert_same(cf(x, xb, phi, G, mask, t, s, o), f(x, xb, phi, G, mask, t, s, o), rtol=0, atol=0)


def test_torch_compile_fullgraph_cpu():
    # aot_eager traces with fake tensors (the registered fake impls) without C++ codegen: cheap.
    _need_cpp_gumbel()
    _compile_check("cpu", "aot_eager")


@pytest.mark.cuda
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_cuda(compile_backend):
    if "cuda" not in sk.backends("cuda"):
        pytest.skip("needs the compiled cuda backend")
    _need_cpp_gumbel()
    _compile_check("cuda", compile_backend)


@pytest.mark.cuda
def test_cuda_graph_capture_replay(cuda_backend):
    d = cuda_backend.device
    R = 33
    x = _varied_topk(R=R).to(d)
    xb, phi, G = to_device(_varied_beam(B=R), d)
    mask = _dead_mask(R, 3, 0).to(d)
    seed = torch.arange(R, device=d) * 13 + 1
    offset = torch.zeros(R, dtype=torch.long, device=d)
    T = torch.full((R,), 0.8, device=d)

    def topk():
        return sk.gumbel_topk(x, 5, temperature=T, seed=seed, offset=offset, check=False)

    def beam():
        return sk.stochastic_beam_step(xb, phi, G, 5, temperature=T, beam_mask=mask, seed=seed, offset=offset,
                                       check=False)

    g1, static1 = capture_cuda_graph(topk)
    g2, static2 = capture_cuda_graph(beam)
    outs = []
    for r in range(3):
        offset.fill_(r * STRIDE)  # in place: the captured kernels read the new offset
        if r == 2:
            x.copy_(x.flip(-1))
            xb.copy_(xb.flip(-1))
        g1.replay()
        g2.replay()
        torch.cuda.synchronize()
        kw = dict(temperature=T, seed=seed, offset=offset.clone())
        assert_topk_same(static1, sk.gumbel_topk(x, 5, **kw))
        assert_beam_same(static2, sk.stochastic_beam_step(xb, phi, G, 5, beam_mask=mask, **kw))
        assert_topk_same(static1, ref.gumbel_topk(*to_device((x, 5), "cpu"), **to_device(kw, "cpu")))
        outs.append(static1.tokens.clone())
    assert not torch.equal(outs[0], outs[1])
