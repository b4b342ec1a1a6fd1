"""The miniature lab's models: a tiny LLaVA target and its drafters, their configs and where the
trained weights ship.

Target: a real ``LlavaForConditionalGeneration`` (CLIP vision tower 36px / 12px patches, 2 layers,
width 64; 2-layer GELU projector; Llama LM 3 layers, width 128, 4 heads / 2 KV heads), so the
decoder takes exactly the path it takes for llava-hf checkpoints. Drafters: a Llama LM of 2 layers,
width 64 (about a tenth of the target), either text-only or wrapped in a
:class:`~specdec.CompactLlavaDrafter` whose image adapter starts from the target's projector.
"""

from __future__ import annotations

import os
from importlib import resources

import torch

from ..models import CompactLlavaDrafter, load_drafter, load_target
from . import scenes

#: Drafter variants shipped (directory names under :func:`weights_dir`).
#: "pretrained": the text-only drafter trained on the ground-truth captions' language only;
#: "kl" / "tvd" / "tvdpp_vocab" / "tvdpp_batch": it, then distilled from the target with that loss;
#: "image": the compact drafter (distilled with the default TVD++ normalisation) that reads the
#: target's image features through an adapter initialised from the target's projector.
DRAFTERS = ("pretrained", "kl", "tvd", "tvdpp_vocab", "tvdpp_batch", "image")


def weights_dir() -> str:
    """The trained weights shipped inside the package (``specdec/lab/weights``)."""
    return str(resources.files("specdec.lab").joinpath("weights"))


def _tf():
    import transformers

    return transformers


def target_config():
    tf = _tf()
    vision = tf.CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=scenes.IMAGE_SIZE, patch_size=scenes.CELL, num_channels=3, projection_dim=64,
    )  # fmt: skip
    return tf.LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(hidden=128, layers=3, heads=4, kv_heads=2, inter=256),
        image_token_index=scenes.IMAGE_ID,
        image_seq_length=scenes.NUM_IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        pad_token_id=scenes.PAD_ID,
    )


def _llama_config(*, hidden: int, layers: int, heads: int, kv_heads: int, inter: int):
    return _tf().LlamaConfig(
        vocab_size=len(scenes.VOCAB), hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=scenes.BOS_ID, eos_token_id=scenes.EOS_ID, pad_token_id=scenes.PAD_ID,
    )  # fmt: skip


def drafter_config():
    return _llama_config(hidden=64, layers=2, heads=4, kv_heads=2, inter=128)


def build_target(seed: int = 0):
    """A freshly initialised target (transformers' own init, seeded)."""
    torch.manual_seed(seed)
    return _tf().LlavaForConditionalGeneration(target_config())


def build_text_drafter(seed: int = 1):
    torch.manual_seed(seed)
    return _tf().LlamaForCausalLM(drafter_config())


@torch.no_grad()
def build_image_drafter(text_drafter, target) -> CompactLlavaDrafter:
    """A compact drafter around (a copy of) ``text_drafter``: its adapter's first layer is a copy of
    the target's projector's first layer (same input features, same inner width)."""
    import copy

    proj = target.model.multi_modal_projector
    out = CompactLlavaDrafter.build(
        copy.deepcopy(text_drafter), target, projector_hidden=proj.linear_1.out_features
    )
    out.projector[0].load_state_dict(proj.linear_1.state_dict())
    return out


#: A user turn as the lab's prompts read: ``<image> question <sep>`` (BOS comes from the tokenizer).
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %} <sep>{% endif %}"
)


def build_processor():
    """A Hugging Face ``LlavaProcessor`` equivalent to :mod:`scenes`' own tokenizer and pixels, so the
    shipped target loads with ``AutoProcessor`` like any llava-hf checkpoint (``specdec generate``).

    Word-level over :data:`scenes.VOCAB`, lower-cased, punctuation split off ("image." reads as
    "image ."), BOS prepended; images resized to 36x36 and scaled to [-1, 1]; ``<image>`` expands to
    the 9 patch features (CLS dropped). Tested token for token and pixel for pixel against
    :func:`scenes.prompt_ids` and :func:`scenes.pixel_values`."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import models as tok_models

    tf = _tf()
    core = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(scenes.VOCAB)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", scenes.BOS_ID)]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words joined by single spaces
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<image>", "<sep>"],
    )  # fmt: skip
    size = scenes.IMAGE_SIZE
    images = tf.CLIPImageProcessor(
        do_resize=True, size={"height": size, "width": size}, do_center_crop=False, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_convert_rgb=True, resample=0,  # nearest: demo's 144 px scene.png (4x nearest) maps back exactly
    )  # fmt: skip
    return tf.LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=scenes.CELL,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
        chat_template=CHAT_TEMPLATE,
    )  # fmt: skip


def load(name: str = "target", *, path: str | None = None, dtype: torch.dtype = torch.float32):
    """Load the shipped target (``name="target"``) or one of :data:`DRAFTERS`, in eval mode."""
    root = path or weights_dir()
    if name != "target" and name not in DRAFTERS:
        raise ValueError(f"name must be 'target' or one of {DRAFTERS}, got {name!r}")
    where = os.path.join(root, name)
    if not os.path.isdir(where):
        raise FileNotFoundError(
            f"no lab weights at {where!r}: train them with `python -m specdec.lab.train --out {root}`"
        )
    return (load_target if name == "target" else load_drafter)(where, dtype=dtype)
