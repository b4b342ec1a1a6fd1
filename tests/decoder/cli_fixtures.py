"""Tiny local models for the CLI tests (nothing is downloaded).

* a word-level tokenizer (``tokenizers.WordLevel`` over WORDS, special tokens <unk> <s> </s> <image>
  <pad>, a <s> prepended to every encoding) wrapped in ``PreTrainedTokenizerFast``;
* a tiny ``LlamaForCausalLM`` target and a 1-layer drafter that shares the target's embeddings, first
  layer, final norm and head (a "layer-skip" drafter: with small random layers the residual stream is
  dominated by the embeddings, so the drafter agrees with the target often and speculation accepts);
* a tiny ``LlavaForConditionalGeneration`` (CLIP vision tower on 8x8 images, 4x4 patches, so 4 image
  features per image after the "default" strategy drops CLS) with its ``LlavaProcessor``
  (``CLIPImageProcessorPil``: torchvision is not needed), optionally with a chat template.

``save_*`` write them with ``save_pretrained`` so the CLI loads them like any local checkpoint.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

SPECIAL = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
UNK_ID, BOS_ID, EOS_ID, IMAGE_ID, PAD_ID = range(5)
WORDS = (
    "the a an cat dog bird fish sat ran flew swam on in under over near mat box tree sea sky is was "
    "red blue green big small old new picture image photo of and with but to what where who how this "
    "that there here , . ? ! hello world yes no one two three describe shows"
).split()
# Chat template of the LLaVA fixture: "USER: <image>\n{text} ASSISTANT:" as llava-1.5 does.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: {{ m['content'][0]['text'] }} "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# Words the chat template uses must be in the vocabulary (else they map to <unk>, harmless anyway).
WORDS += ["USER:", "ASSISTANT:"]


def build_tokenizer():
    """A word-level fast tokenizer over SPECIAL + WORDS; encodings start with <s>."""
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words joined by spaces
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, clean_up_tokenization_spaces=False,
    )


def vocab_size() -> int:
    return len(SPECIAL) + len(WORDS)


def _llama_config(layers: int, hidden: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False,
    )


def build_text_pair(seed: int = 0, head_scale: float = 20.0):
    """(target, drafter): a 2-layer Llama and the 1-layer drafter sharing its weights (see module doc).

    ``head_scale`` multiplies the target head so its distributions are peaked (sampling at
    temperature 0.7 is then not uniform noise)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    target = LlamaForCausalLM(_llama_config(2)).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(head_scale)
    drafter = LlamaForCausalLM(_llama_config(1)).eval()
    sd = {k: v for k, v in target.state_dict().items() if not k.startswith("model.layers.1.")}
    drafter.load_state_dict(sd, strict=True)
    return target, drafter


def build_llava(tokenizer, seed: int = 0, chat_template: str | None = CHAT_TEMPLATE,
                head_scale: float = 20.0):
    """(model, processor): a tiny LLaVA whose language model has the tokenizer's vocabulary."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vision = CLIPVisionConfig(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    # 8x8 image, 4x4 patches: 4 patch features + CLS; "default" drops CLS, so 4 image tokens.
    cfg = LlavaConfig(vision_config=vision, text_config=_llama_config(2), image_token_index=IMAGE_ID,
                      image_seq_length=4, vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=chat_template)
    return model, processor


def save_text_pair(root: str) -> tuple[str, str]:
    """Save target and drafter (each with the tokenizer) under root; returns their directories."""
    tok = build_tokenizer()
    target, drafter = build_text_pair()
    paths = []
    for name, model in (("target", target), ("drafter", drafter)):
        d = os.path.join(root, name)
        model.save_pretrained(d)
        tok.save_pretrained(d)
        paths.append(d)
    return paths[0], paths[1]


def save_llava(root: str, chat_template: str | None = CHAT_TEMPLATE) -> str:
    d = os.path.join(root, "llava")
    model, processor = build_llava(build_tokenizer(), chat_template=chat_template)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d


def save_compact_drafter(root: str, llava_dir: str) -> str:
    """A ``specdec.CompactLlavaDrafter`` for the LLaVA of ``llava_dir``: a 1-layer LM of the same
    vocabulary plus a projector of the target's vision features (random weights)."""
    from specdec import CompactLlavaDrafter
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    target = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    torch.manual_seed(1)
    drafter = CompactLlavaDrafter.build(LlamaForCausalLM(_llama_config(1)).eval(), target)
    d = os.path.join(root, "compact_drafter")
    drafter.save_pretrained(d)
    return d


def write_png(path: str, size: tuple[int, int] = (20, 13)) -> str:
    """A small RGB gradient PNG (not square: the processor resizes and center-crops it)."""
    from PIL import Image

    w, h = size
    img = Image.new("RGB", (w, h))
    img.putdata([(10 * x % 256, 20 * y % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    img.save(path)
    return path
