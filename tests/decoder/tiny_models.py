"""Tiny random Hugging Face models for the decoder tests (nothing is downloaded).

Every model is built from a config with explicitly seeded weights, saved with ``save_pretrained``
into a temporary folder and loaded back by path (``AutoModelForCausalLM.from_pretrained`` /
``LlavaForConditionalGeneration.from_pretrained``), float32 (or float64), eval mode, SDPA attention
unless asked otherwise.

How the weights are chosen, so that the tests mean something:

- The target's logits are sharp (``lm_scale`` multiplies an lm_head of unit-RMS rows), so greedy
  argmaxes are far from ties and the sampling tests see a non-uniform law.
- The target depends on its context (attention and MLP outputs are of the order of the residual
  stream), so a decoder that feeds the wrong KV cache or positions changes the output.
  :func:`context_sensitivity` measures it; ``test_tiny_models`` asserts it.
- A drafter is a DIFFERENT, smaller random model (its own seed, one layer instead of two, a
  narrower MLP, fewer heads) that shares only a NOISY copy of the target's embedding and lm_head.
  Both models therefore share a "bigram" component and a good fraction (not all) of the drafts are
  accepted: both the accept and the reject paths of every verifier are exercised.
- Vocabulary mismatches: a drafter may have a smaller vocabulary (the last target ids do not exist
  for it: the target must produce them and the decoder must align) or a larger one (its extra ids
  get a large probability, so a decoder that forgets to mask them proposes ids the target does not
  have).
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
from specdec.models import cache_kv_tensors, cache_kwarg
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

# LLaVA geometry: image 8x8, patch 4 -> (8/4)^2 = 4 patches; strategy "default" drops CLS.
IMAGE_SIZE = 8
PATCH_SIZE = 4
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2


def llama_config(vocab: int, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 inter: int = 64) -> LlamaConfig:
    """A tiny Llama config with no special tokens (so HF generate never stops on its own)."""
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )


@torch.no_grad()
def _init_decoder_layers(layers, gen: torch.Generator, layer_scale: float) -> None:
    """Unit-variance-preserving random linear layers; output projections scaled by layer_scale."""
    for name, p in layers.named_parameters():
        if p.dim() == 1:  # RMSNorm weights
            p.fill_(1.0)
            continue
        fan_in = p.shape[1]
        w = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
        if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            w = w * layer_scale
        p.copy_(w.to(p.dtype))


@torch.no_grad()
def _init_llama(model: LlamaForCausalLM, seed: int, *, lm_scale: float, layer_scale: float,
                embed: torch.Tensor | None = None, lm_head: torch.Tensor | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    vocab = model.config.vocab_size
    if embed is None:
        embed = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
    if lm_head is None:
        lm_head = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
        lm_head = lm_head * (lm_scale / math.sqrt(hidden))
    model.model.embed_tokens.weight.copy_(embed.to(model.dtype))
    model.lm_head.weight.copy_(lm_head.to(model.dtype))
    model.model.norm.weight.fill_(1.0)
    _init_decoder_layers(model.model.layers, gen, layer_scale)


def _save_load_llama(model, path, dtype, attn) -> LlamaForCausalLM:
    model.save_pretrained(path)
    out = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    return out.eval()


def build_llama_target(path, *, vocab: int, seed: int = 0, lm_scale: float = 4.0, layer_scale: float = 1.0,
                       dtype=torch.float32, attn: str = "sdpa") -> LlamaForCausalLM:
    """Target: 2 layers, hidden 32, 4 heads (2 KV heads), MLP 64."""
    model = LlamaForCausalLM(llama_config(vocab))
    _init_llama(model, seed, lm_scale=lm_scale, layer_scale=layer_scale)
    return _save_load_llama(model, path, dtype, attn)


def _noisy(w: torch.Tensor, rel: float, gen: torch.Generator) -> torch.Tensor:
    w = w.detach().to(torch.float64)
    return w + rel * w.std() * torch.randn(w.shape, generator=gen, dtype=torch.float64)


def build_llama_drafter(path, target_lm, *, vocab: int | None = None, seed: int = 1, noise: float = 0.3,
                        layer_scale: float = 1.0, extra_boost: float = 1.3, extra_copy=(),
                        dtype=torch.float32, attn: str = "sdpa") -> LlamaForCausalLM:
    """Drafter: 1 layer, hidden 32, 2 heads (1 KV head), MLP 32, its own random layers (``seed``).

    ``target_lm`` is the target's language model (a LlamaForCausalLM, or the LLaVA model: its
    ``get_input_embeddings`` / ``get_output_embeddings`` are used). The drafter's embedding and
    lm_head are a noisy copy of the target's (relative noise ``noise``) on the ids both have. With
    ``vocab`` < target vocab the last ids do not exist for the drafter; with ``vocab`` > target vocab
    the extra ids' lm_head rows copy the rows of ids ``extra_copy`` (then 0, 1, ...) times
    ``extra_boost``, so the drafter gives them MORE probability than to those ids (a decoder that
    does not mask them proposes them).
    """
    t_embed = target_lm.get_input_embeddings().weight.detach()
    t_head = target_lm.get_output_embeddings().weight.detach()
    t_vocab, hidden = t_embed.shape
    vocab = t_vocab if vocab is None else vocab
    gen = torch.Generator().manual_seed(10_000 + seed)
    n = min(vocab, t_vocab)
    embed = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
    head = torch.zeros(vocab, hidden, dtype=torch.float64)
    embed[:n] = _noisy(t_embed[:n], noise, gen)
    head[:n] = _noisy(t_head[:n], noise, gen)
    copy = list(extra_copy) + list(range(n))
    for j in range(n, vocab):
        head[j] = head[copy[j - n]] * extra_boost
    model = LlamaForCausalLM(llama_config(vocab, hidden=hidden, layers=1, heads=2, kv_heads=1, inter=32))
    _init_llama(model, seed, lm_scale=0.0, layer_scale=layer_scale, embed=embed, lm_head=head)
    return _save_load_llama(model, path, dtype, attn)


def llava_config(vocab: int, image_token_index: int) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, projection_dim=16,
    )
    return LlavaConfig(
        vision_config=vision, text_config=llama_config(vocab), image_token_index=image_token_index,
        image_seq_length=NUM_IMAGE_TOKENS, vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu", tie_word_embeddings=False,
    )


@torch.no_grad()
def build_llava_target(path, *, vocab: int, image_token_index: int | None = None, seed: int = 0,
                       lm_scale: float = 4.0, layer_scale: float = 1.0, image_row_copy: int | None = None,
                       image_row_scale: float = 1.05, dtype=torch.float32,
                       attn: str = "sdpa") -> LlavaForConditionalGeneration:
    """Tiny LLaVA: CLIP vision tower (image 8, patch 4, hidden 16, 2 layers), 2-layer projector,
    and the same tiny Llama as :func:`build_llama_target` as its language model.

    ``image_token_index`` defaults to the last id. ``image_row_copy``: the image token's lm_head row
    becomes ``image_row_scale`` times the row of that token, so the image token id is a likely
    *generated* token (about as likely as that token; more when its logit is positive).
    """
    image_token_index = vocab - 1 if image_token_index is None else image_token_index
    model = LlavaForConditionalGeneration(llava_config(vocab, image_token_index))
    gen = torch.Generator().manual_seed(seed)
    lm = LlamaForCausalLM(llama_config(vocab))
    _init_llama(lm, seed, lm_scale=lm_scale, layer_scale=layer_scale)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    head = lm.lm_head.weight.detach().clone()
    if image_row_copy is not None:
        head[image_token_index] = head[image_row_copy] * image_row_scale
    model.lm_head.weight.copy_(head)
    for name, p in model.model.vision_tower.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0 if "layer_norm" in name or "layrnorm" in name else 0.0)
        else:
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    for p in model.model.multi_modal_projector.parameters():
        if p.dim() == 1:
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    model.save_pretrained(path)
    out = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    return out.eval()


def llava_inputs(model: LlavaForConditionalGeneration, text_before, text_after, *, seed: int = 0):
    """(input_ids [1, T], pixel_values [1, 3, 8, 8]): the image token expanded to
    NUM_IMAGE_TOKENS copies between the two text parts, like the LLaVA processor produces."""
    img = model.config.image_token_index
    ids = list(text_before) + [img] * NUM_IMAGE_TOKENS + list(text_after)
    assert img not in text_before and img not in text_after
    gen = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen).to(model.dtype)
    return torch.tensor([ids], dtype=torch.long), pixel_values


@torch.no_grad()
def hf_greedy(model, input_ids, n: int, pixel_values=None, eos_token_id=None) -> torch.Tensor:
    """``model.generate(do_sample=False)`` with everything that could stop it early switched off."""
    kw = {} if pixel_values is None else {"pixel_values": pixel_values}
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=n, min_new_tokens=0, eos_token_id=eos_token_id,
                         pad_token_id=0, temperature=None, top_k=None, top_p=None, **kw)
    return out


@torch.no_grad()
def full_logits(model, ids: torch.Tensor, pixel_values=None, prompt_len: int | None = None) -> torch.Tensor:
    """Logits [R, T, V] of a full forward (no cache) over ``ids`` [R, T].

    With ``pixel_values`` (LLaVA), the image features replace the embeddings of the image tokens of
    the first ``prompt_len`` positions only: a later (generated) token equal to the image token id is
    an ordinary token, embedded by the embedding table, as in generation where only the prefill
    carries ``pixel_values``. (``model(input_ids, pixel_values)`` would refuse such a sequence.)
    """
    if pixel_values is None:
        return model(input_ids=ids).logits
    prompt_len = ids.shape[1] if prompt_len is None else prompt_len
    img = model.config.image_token_index
    emb = model.get_input_embeddings()(ids).clone()
    feats = model.get_image_features(pixel_values=pixel_values).pooler_output
    feats = torch.cat(list(feats), 0).to(emb.dtype)  # [NUM_IMAGE_TOKENS, H]
    where = (ids[:, :prompt_len] == img).nonzero().tolist()
    per_row = len(where) // ids.shape[0]
    assert per_row == feats.shape[0], (per_row, feats.shape)
    for k, (r, t) in enumerate(where):
        emb[r, t] = feats[k % per_row]
    return model(inputs_embeds=emb).logits


@torch.no_grad()
def next_logits(model, ids: torch.Tensor, pixel_values=None, prompt_len: int | None = None) -> torch.Tensor:
    """Logits [R, V] of the next token after each row of ``ids`` [R, T] (see :func:`full_logits`)."""
    return full_logits(model, ids, pixel_values, prompt_len)[:, -1, :]


@torch.no_grad()
def context_sensitivity(model, seq: torch.Tensor, start: int) -> float:
    """Fraction of positions t >= start of ``seq`` [1, T] (a text model) whose next-token argmax
    changes when the model sees only the last 2 tokens instead of the whole prefix."""
    full = model(input_ids=seq).logits[0]
    changed = 0
    total = 0
    for t in range(start, seq.shape[1]):
        short = model(input_ids=seq[:, max(0, t - 1):t + 1]).logits[0, -1]
        changed += int(short.argmax() != full[t].argmax())
        total += 1
    return changed / max(total, 1)


@dataclass
class Margins:
    """Smallest top-1/top-2 logit gap along a sequence (how far greedy is from a tie)."""

    min_gap: float
    position: int


@torch.no_grad()
def greedy_margins(model, seq: torch.Tensor, prompt_len: int, pixel_values=None) -> Margins:
    """The smallest top-1/top-2 logit gap over the positions that predict seq[prompt_len:]."""
    logits = full_logits(model, seq, pixel_values, prompt_len)[0, prompt_len - 1:-1].double()
    top2 = logits.topk(2, dim=-1).values
    gaps = top2[:, 0] - top2[:, 1]
    i = int(gaps.argmin())
    return Margins(float(gaps[i]), prompt_len + i)


# ----------------------------------------------------------------------------------------------
# The standard models of the decoder tests, built once per process (functools.cache) into one
# temporary folder removed at exit. The seeds and scales were chosen by measuring (see
# test_tiny_models.py, which asserts the properties the decoder tests rely on).
# ----------------------------------------------------------------------------------------------

_ROOT: list[str] = []


def _path(name: str) -> str:
    if not _ROOT:
        _ROOT.append(tempfile.mkdtemp(prefix="specdec_tiny_models_"))
        atexit.register(shutil.rmtree, _ROOT[0], ignore_errors=True)
    return os.path.join(_ROOT[0], name)


def _tag(dtype, attn) -> str:
    return f"{str(dtype).replace('torch.', '')}_{attn}"


# Greedy tests: vocabulary 52, sharp logits (smallest top-2 gap along the reference output ~0.1).
GREEDY_VOCAB = 52
GREEDY_PROMPT = [3, 17, 5, 29, 8, 41, 12]
SMALL_DRAFT_VOCAB = 48   # the target's greedy output holds ids 48..51, which this drafter lacks
LARGE_DRAFT_VOCAB = 56   # ids 52..55 copy (x1.3) the rows of ids the target often emits
LLAVA_TEXT = ([3, 17, 5], [29, 8, 41, 12])  # text before / after the image
# Law tests: vocabulary 12, moderate entropy (H ~ 1.8 nats), acceptance ~0.5-0.65.
LAW_VOCAB = 12
LAW_PROMPT = [3, 7, 5, 2, 8]
LAW_LLAVA_TEXT = ([3, 7], [5, 2, 8])


@functools.cache
def greedy_target(dtype=torch.float32, attn: str = "sdpa") -> LlamaForCausalLM:
    return build_llama_target(_path(f"greedy_target_{_tag(dtype, attn)}"), vocab=GREEDY_VOCAB, seed=5,
                              lm_scale=4.0, layer_scale=0.5, dtype=dtype, attn=attn)


@functools.cache
def greedy_drafter(kind: str = "same", dtype=torch.float32, attn: str = "sdpa") -> LlamaForCausalLM:
    """kind: "same" (vocab 52), "small" (48) or "large" (56)."""
    vocab = {"same": GREEDY_VOCAB, "small": SMALL_DRAFT_VOCAB, "large": LARGE_DRAFT_VOCAB}[kind]
    return build_llama_drafter(_path(f"greedy_drafter_{kind}_{_tag(dtype, attn)}"),
                               greedy_target(dtype, attn), vocab=vocab, seed=6, noise=0.1, layer_scale=0.1,
                               extra_copy=(4, 6, 47, 45), dtype=dtype, attn=attn)


@functools.cache
def greedy_llava(dtype=torch.float32, attn: str = "sdpa") -> LlavaForConditionalGeneration:
    """Image token id 51 (the last); its greedy output holds the image token id several times."""
    return build_llava_target(_path(f"greedy_llava_{_tag(dtype, attn)}"), vocab=GREEDY_VOCAB, seed=9,
                              lm_scale=4.0, layer_scale=0.5, dtype=dtype, attn=attn)


@functools.cache
def greedy_llava_drafter(kind: str = "same", dtype=torch.float32, attn: str = "sdpa") -> LlamaForCausalLM:
    """Text-only drafter of :func:`greedy_llava`. kind "same": vocab 52 (has the image token id);
    "small": vocab 51, without the image token id (like llava-hf 32064 vs a 32000 Llama)."""
    vocab = {"same": GREEDY_VOCAB, "small": GREEDY_VOCAB - 1}[kind]
    return build_llama_drafter(_path(f"greedy_llava_drafter_{kind}_{_tag(dtype, attn)}"),
                               greedy_llava(dtype, attn), vocab=vocab, seed=10, noise=0.1, layer_scale=0.1,
                               dtype=dtype, attn=attn)


@functools.cache
def law_target() -> LlamaForCausalLM:
    return build_llama_target(_path("law_target"), vocab=LAW_VOCAB, seed=1, lm_scale=2.0, layer_scale=0.5)


@functools.cache
def law_drafter(kind: str = "same") -> LlamaForCausalLM:
    """kind: "same" (vocab 12), "small" (10: ids 10, 11 missing; the target gives them ~0.24) or
    "large" (14: ids 12, 13 copy x1.3 the rows of the target's likely ids)."""
    vocab = {"same": LAW_VOCAB, "small": LAW_VOCAB - 2, "large": LAW_VOCAB + 2}[kind]
    return build_llama_drafter(_path(f"law_drafter_{kind}"), law_target(), vocab=vocab, seed=2, noise=0.2,
                               layer_scale=0.3, extra_copy=(10, 11))


@functools.cache
def law_llava() -> LlavaForConditionalGeneration:
    """Image token id 11 (the last), whose lm_head row is 0.8 x that of id 5: the image token id is
    a likely generated token."""
    return build_llava_target(_path("law_llava"), vocab=LAW_VOCAB, seed=1, lm_scale=2.0, layer_scale=0.5,
                              image_row_copy=5, image_row_scale=0.8)


@functools.cache
def law_llava_drafter() -> LlamaForCausalLM:
    return build_llama_drafter(_path("law_llava_drafter"), law_llava(), seed=3, noise=0.2, layer_scale=0.3)


def greedy_llava_inputs(dtype=torch.float32, attn: str = "sdpa"):
    return llava_inputs(greedy_llava(dtype, attn), *LLAVA_TEXT)


def law_llava_inputs():
    return llava_inputs(law_llava(), *LAW_LLAVA_TEXT)


def _compact(name: str, language_model, target):
    """A specdec.CompactLlavaDrafter (small LM + a seeded random projector of the target's vision
    features), saved and loaded back by path."""
    from specdec import CompactLlavaDrafter

    with torch.random.fork_rng():
        torch.manual_seed(0)
        built = CompactLlavaDrafter.build(language_model, target)
    path = _path(name)
    built.save_pretrained(path)
    return CompactLlavaDrafter.from_pretrained(path).eval()


@functools.cache
def greedy_compact_drafter():
    return _compact("greedy_compact", greedy_llava_drafter(), greedy_llava())


@functools.cache
def law_compact_drafter():
    return _compact("law_compact", law_llava_drafter(), law_llava())


@torch.no_grad()
def fresh_kv(
    model, tokens: list[int], pixel_values=None, prompt_len: int = 0
) -> list[tuple[torch.Tensor, ...]]:
    """Per layer, (keys [H, L, D], values [H, L, D]) of a fresh prefill of ``tokens`` alone (LLaVA:
    the image features go to the image tokens of the first ``prompt_len`` positions only; a
    generated image token id is an ordinary token, as in generation)."""
    cache = DynamicCache(config=model.config)
    ids = torch.tensor([tokens])
    if pixel_values is None:
        model(input_ids=ids, **{cache_kwarg(model): cache}, use_cache=True)
    else:
        emb = model.get_input_embeddings()(ids).clone()
        feats = torch.cat(list(model.get_image_features(pixel_values=pixel_values).pooler_output), 0)
        img = model.config.image_token_index
        where = [t for t in range(min(prompt_len, len(tokens))) if tokens[t] == img]
        for k, t in enumerate(where):
            emb[0, t] = feats[k]
        model(inputs_embeds=emb, **{cache_kwarg(model): cache}, use_cache=True)
    t = cache_kv_tensors(cache)
    return [(t[2 * layer][0], t[2 * layer + 1][0]) for layer in range(len(t) // 2)]
