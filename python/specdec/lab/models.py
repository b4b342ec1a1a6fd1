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
