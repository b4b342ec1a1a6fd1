"""End-to-end benchmarks of ``specdec.SpeculativeDecoder.generate`` on tiny random models on CPU:
tokens/s and block efficiency (tau) per method at temperature 0 and 0.7, 32 new tokens, batch 1.

Models (built here, nothing downloaded): a 4-layer Llama target (hidden 64, V = 512) with a peaked
head and damped layers 1..3, and a 1-layer "layer-skip" drafter sharing its embeddings, first layer,
norm and head, so the drafter agrees with the target often and every method accepts drafts (tau of
about 2-3). Torch runs on one thread (see ``one_thread``). At this size a forward is
Python overhead, so tokens/s measures the decoder's per-round cost (drafting, verification, cache
rollback/compaction), not a model speed-up; tau is what carries over to real models.

Before timing, every case is checked: at temperature 0 the output must equal the target's greedy
decoding (the "ar" method), at 0.7 it must have the 32 tokens asked for (no EOS here). Under
``--benchmark-disable`` (the CI smoke pass) each case makes one checked call.

``benchmark.extra_info`` gets method, shape, temperature, tau, acceptance_rate, mbsu, rounds,
target_calls and tokens_per_s (32 / median when timed, else from the single call). There is no
"op" key, so benchmarks/record.py (the kernel results CSV) leaves these rows out.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
specdec = pytest.importorskip("specdec")
from specdec.compare import cpu_name  # noqa: E402

NEW_TOKENS = 32
VOCAB = 512
PROMPT_LEN = 8
TEMPERATURES = (0.0, 0.7)
# Output scale of the target's layers 1..3 (the ones the drafter lacks): at 1.0 the drafter is a poor
# guess (tau ~1.1-1.3); at 0.3 tau is ~2-3, the range of a trained drafter.
LATE_LAYER_SCALE = 0.3
# (id, SpeculativeDecoder kwargs)
CASES: list[tuple[str, dict[str, Any]]] = [
    ("ar", {"method": "ar"}),
    ("sd-g3", {"method": "sd", "gamma": 3}),
    ("specinfer-2x2", {"method": "specinfer", "branching": (2, 2)}),
    ("rsd_c-2-2-2", {"method": "rsd_c", "branching": (2, 2, 2)}),
    ("rsd_s-W3L2", {"method": "rsd_s", "width": 3, "depth": 2}),
    ("sd-adaedl", {"method": "sd", "gamma": 5, "policy": "adaedl"}),
]


def _config(layers: int):
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-1 forwards of a tiny model gain nothing from intra-op threads, and on a busy machine
    (other processes on the cores) OpenMP threads waiting for each other make every op take a
    scheduler slice: measured 50x slower with 2 threads on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    target = transformers.LlamaForCausalLM(_config(4)).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(20.0)  # peaked distributions: sampling at 0.7 is not noise
        for layer in target.model.layers[1:]:  # layers the drafter skips write less to the residual
            layer.self_attn.o_proj.weight.mul_(LATE_LAYER_SCALE)
            layer.mlp.down_proj.weight.mul_(LATE_LAYER_SCALE)
    drafter = transformers.LlamaForCausalLM(_config(1)).eval()
    drafter.load_state_dict({k: v for k, v in target.state_dict().items()
                             if not k.startswith("model.layers.") or k.startswith("model.layers.0.")})
    prompt = torch.randint(3, VOCAB, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    return target, drafter, prompt


@pytest.fixture(scope="module")
def greedy_reference(models) -> list[int]:
    target, _, prompt = models
    res = specdec.SpeculativeDecoder(target, None, method="ar").generate(prompt, max_new_tokens=NEW_TOKENS)
    return res.sequences[0, PROMPT_LEN:].tolist()


@pytest.mark.parametrize("temperature", TEMPERATURES, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name, kwargs", CASES, ids=[c[0] for c in CASES])
def test_generate(benchmark, models, greedy_reference, name, kwargs, temperature):
    target, drafter, prompt = models
    dec = specdec.SpeculativeDecoder(target, drafter if kwargs["method"] != "ar" else None, **kwargs)

    def call():
        return dec.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=temperature, seed=0,
                            eos_token_id=None)

    def check(res) -> None:
        new = res.sequences[0, PROMPT_LEN:].tolist()
        assert len(new) == NEW_TOKENS and res.stats.new_tokens == NEW_TOKENS
        assert all(0 <= t < VOCAB for t in new)
        if temperature == 0.0:
            assert new == greedy_reference, f"{name}: greedy output differs from the target's greedy decoding"

    if benchmark.disabled:
        res = benchmark(call)  # one call (--benchmark-disable)
        check(res)
        timing = "not timed (--benchmark-disable)"
    else:
        t0 = time.perf_counter()
        res = call()  # warm-up, checked before timing
        first_s = time.perf_counter() - t0
        check(res)
        rounds = max(3, min(20, int(3.0 / max(first_s, 1e-3))))
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
        timing = "eager"
    st = res.stats
    median = benchmark.stats.stats.median if benchmark.stats else None
    benchmark.extra_info.update({
        "method": kwargs["method"],
        "case": name,
        "decoder_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "temperature": temperature,
        "new_tokens": st.new_tokens,
        "tau": st.block_efficiency,
        "acceptance_rate": st.acceptance_rate,
        "mbsu": st.mbsu,
        "param_ratio": st.param_ratio,
        "rounds": st.rounds,
        "target_calls": st.target_calls,
        "tokens_per_s": NEW_TOKENS / median if median else st.tokens_per_s,
        "device": f"{cpu_name()} ({torch.get_num_threads()} thread)",
        "device_type": "cpu",
        "timing": timing,
    })
    if kwargs["method"] == "ar":
        assert st.block_efficiency == 1.0
