"""Models for the decoder: loading targets and drafters, the compact LLaVA drafter, and Hugging Face
cache helpers (the KV-cached view of B sequences through a model is :mod:`specdec.adapter`).

Nothing here downloads unless a hub name is given and the machine has network; every loader also
takes a local directory written by ``save_pretrained``.
"""

from __future__ import annotations

import copy
import json
import os

import torch
from torch import nn

import specdec_kernels as sk

from . import named_models
from .adapter import SequenceCache  # noqa: F401  (re-exported: the model adapter lives in adapter.py)

#: The file that marks a directory as a :class:`CompactLlavaDrafter`.
COMPACT_DRAFTER_FILE = "specdec_drafter.json"


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - the `llava` extra brings it
        raise ImportError("specdec needs transformers: pip install 'specdec_kernels[llava]'") from e
    return transformers


def is_multimodal(model) -> bool:
    """True for a LLaVA-style model: it takes ``pixel_values`` and has an image token id."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "image_token_id", None) is not None and _projector(model) is not None


def image_token_id(model) -> int | None:
    """The image placeholder id of a LLaVA-style target (None for a text-only model)."""
    return int(model.config.image_token_id) if is_multimodal(model) else None


def _projector(model):
    inner = getattr(model, "model", None)
    return getattr(inner, "multi_modal_projector", None) or getattr(model, "multi_modal_projector", None)


def cache_kwarg(model: nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.2x on (``past_key_values``
    still works there but warns on every call), ``past_key_values`` before."""
    import inspect

    inner = model.language_model if isinstance(model, CompactLlavaDrafter) else model
    try:
        params = inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


# ----------------------------------------------------------------------------------------------
# Hugging Face KV caches: the layers' tensors, cropping, tree compaction
# ----------------------------------------------------------------------------------------------


def cache_kv_tensors(cache) -> list[torch.Tensor]:
    """Every layer's keys and values ([B, H, S, D] tensors, keys then values per layer) of a Hugging
    Face cache: a transformers ``Cache`` (``.layers[i].keys/.values``, transformers >= 4.56, or
    ``.key_cache/.value_cache``, 4.x) or a legacy tuple of (keys, values) per layer. A layer that
    holds nothing yet (lazy initialisation) is left out: it has nothing to move."""
    layers = getattr(cache, "layers", None)
    if layers is not None and all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        pairs = [(layer.keys, layer.values) for layer in layers]
    elif hasattr(cache, "key_cache") and hasattr(cache, "value_cache"):
        pairs = list(zip(cache.key_cache, cache.value_cache, strict=True))
    elif isinstance(cache, (tuple, list)) and all(isinstance(kv, (tuple, list)) and len(kv) >= 2
                                                  for kv in cache):
        pairs = [(kv[0], kv[1]) for kv in cache]
    else:
        raise ValueError("cache must be a Hugging Face Cache (with .layers or .key_cache/.value_cache) or a "
                         f"legacy tuple of (keys, values) per layer, got {type(cache).__name__}")
    tensors = []
    for k, v in pairs:
        if k is None or (isinstance(k, torch.Tensor) and k.numel() == 0):
            continue
        tensors += [k, v]
    return tensors


def crop_cache(cache, length: int) -> None:
    """Keep the first ``length`` slots of a transformers Cache. Portable: transformers 5.x's
    ``crop(n)`` takes the number of tokens to remove as a negative n (a positive n raises); 4.x keeps
    n tokens but also reads a negative n as "remove |n|"."""
    extra = int(cache.get_seq_length()) - length
    if extra > 0:
        cache.crop(-extra)


def compact_tree_cache(cache, accepted_nodes: torch.Tensor, prefix_len: int, *,
                       num_accepted: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """:func:`specdec_kernels.compact_tree_kv` on a Hugging Face cache: move the accepted path's
    key/value entries of every layer right after the root (slot ``prefix_len``), in place, then crop
    the cache to ``prefix_len + 1 + max(num_accepted)`` slots.

    ``cache``: as :func:`cache_kv_tensors` takes it (a legacy tuple cannot be cropped: slice its
    tensors to the returned lengths yourself). ``prefix_len``: an int (the rows of a cache share one
    length). Returns the lengths [B] (int64); with a batched cache, rows shorter than the longest keep
    stale entries past their length: mask them in the next forward.
    """
    if not isinstance(prefix_len, int) or isinstance(prefix_len, bool):
        raise ValueError("prefix_len must be an int for a Hugging Face Cache (its rows share one length)")
    tensors = cache_kv_tensors(cache)
    lengths = sk.compact_tree_kv(tensors, accepted_nodes, prefix_len, num_accepted=num_accepted, check=check)
    if tensors and hasattr(cache, "crop"):
        crop_cache(cache, int(lengths.max()) if lengths.numel() else prefix_len + 1)
    return lengths


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# The compact LLaVA drafter (docs/algorithms.md §8): a small LM plus a small projector that reads the
# TARGET's vision features, so the drafter needs no vision tower of its own.
# ----------------------------------------------------------------------------------------------


class CompactLlavaDrafter(nn.Module):
    """A small causal LM whose image-token embeddings come from a small projector of the target's
    vision features (the tensor the target's own ``multi_modal_projector`` reads).

    Build one with :meth:`build`, save it with :meth:`save_pretrained` and load it with
    :meth:`from_pretrained` (or :func:`load_drafter`). In the decoder the target's features are
    captured during the target's prefill, so the vision tower runs once per prompt.
    """

    def __init__(
        self,
        language_model: nn.Module,
        feature_dim: int,
        image_token_id: int,
        projector_act: str = "gelu",
        projector_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        hidden = language_model.get_input_embeddings().embedding_dim
        self.language_model = language_model
        self.feature_dim = int(feature_dim)
        self.image_token_id = int(image_token_id)
        self.projector_act = projector_act
        # The inner width defaults to the LM's; a target-sized one lets the first layer start as a
        # copy of the target's own projector (the miniature lab does this).
        self.projector_hidden = hidden if projector_hidden is None else int(projector_hidden)
        if self.projector_hidden < 1:
            raise ValueError(f"projector_hidden must be >= 1, got {projector_hidden}")
        acts = {"gelu": nn.GELU(), "relu": nn.ReLU(), "silu": nn.SiLU()}
        if projector_act not in acts:
            raise ValueError(f"projector_act must be one of {sorted(acts)}, got {projector_act!r}")
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, self.projector_hidden),
            acts[projector_act],
            nn.Linear(self.projector_hidden, hidden),
        )
        self.projector.to(dtype=language_model.dtype)

    # transformers-like surface the decoder relies on
    @property
    def config(self):
        return self.language_model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    @classmethod
    def build(
        cls,
        language_model: nn.Module,
        target: nn.Module | None = None,
        *,
        feature_dim: int | None = None,
        image_token_id: int | None = None,
        projector_act: str = "gelu",
        projector_hidden: int | None = None,
    ) -> CompactLlavaDrafter:
        """A drafter for ``target``: the feature size and image token id come from it unless given."""
        if target is not None:
            proj = _projector(target)
            if proj is None:
                raise ValueError("target must be a LLaVA-style model (it has no multi_modal_projector)")
            first = next(m for m in proj.modules() if isinstance(m, nn.Linear))
            feature_dim = feature_dim or first.in_features
            image_token_id = image_token_id if image_token_id is not None else target.config.image_token_id
        if feature_dim is None or image_token_id is None:
            raise ValueError("give target, or both feature_dim and image_token_id")
        return cls(language_model, feature_dim, image_token_id, projector_act, projector_hidden)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        emb_layer = self.get_input_embeddings()
        ids = input_ids.clamp(0, emb_layer.num_embeddings - 1)
        emb = emb_layer(ids)
        if image_features is not None:
            where = input_ids == self.image_token_id
            feats = self.projector(image_features.to(emb.dtype).reshape(-1, self.feature_dim))
            if int(where.sum()) != feats.shape[0]:
                raise ValueError(
                    f"the prompt has {int(where.sum())} image tokens but the target gave "
                    f"{feats.shape[0]} image feature vectors"
                )
            emb = emb.masked_scatter(where[..., None], feats)
        return emb

    def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None, **kwargs):
        return self.language_model(inputs_embeds=self.embed(input_ids, image_features), **kwargs)

    def save_pretrained(self, path: str) -> None:
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        self.language_model.save_pretrained(os.path.join(path, "language_model"))
        save_file(
            {k: v.contiguous() for k, v in self.projector.state_dict().items()},
            os.path.join(path, "projector.safetensors"),
        )
        with open(os.path.join(path, COMPACT_DRAFTER_FILE), "w") as f:
            json.dump(
                {
                    "type": "compact_llava",
                    "feature_dim": self.feature_dim,
                    "image_token_id": self.image_token_id,
                    "projector_act": self.projector_act,
                    "projector_hidden": self.projector_hidden,
                },
                f,
                indent=1,
            )

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: torch.dtype | None = None) -> CompactLlavaDrafter:
        from safetensors.torch import load_file

        with open(os.path.join(path, COMPACT_DRAFTER_FILE)) as f:
            meta = json.load(f)
        if meta.get("type") != "compact_llava":
            raise ValueError(f"{path}: unknown drafter type {meta.get('type')!r}")
        kw = {"dtype": dtype} if dtype is not None else {}
        lm = _transformers().AutoModelForCausalLM.from_pretrained(os.path.join(path, "language_model"), **kw)
        out = cls(
            lm,
            meta["feature_dim"],
            meta["image_token_id"],
            meta.get("projector_act", "gelu"),
            meta.get("projector_hidden"),
        )
        out.projector.load_state_dict(load_file(os.path.join(path, "projector.safetensors")))
        out.projector.to(dtype=lm.dtype)
        return out.eval()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def cut_output_vocab(model: nn.Module, n: int) -> nn.Module:
    """A view of ``model`` whose output layer scores only the token ids below ``n`` (the first ``n``
    rows of its weight, shared, not copied); ``model`` itself is unchanged. Used for a drafter: its
    logits are padded with -inf to the target's vocabulary, so the ids cut away get probability 0."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(f"draft_vocab needs a drafter whose output layer is an nn.Linear, got {type(head)}")
    if n >= head.out_features:
        return model
    cut = nn.Linear(head.in_features, n, bias=head.bias is not None, device=head.weight.device,
                    dtype=head.weight.dtype)  # fmt: skip
    cut.weight = nn.Parameter(head.weight.detach()[:n], requires_grad=False)
    if head.bias is not None:
        cut.bias = nn.Parameter(head.bias.detach()[:n], requires_grad=False)
    view = copy.copy(model)
    view._modules = dict(model._modules)  # a module dict of its own: the original keeps its head
    view.set_output_embeddings(cut)
    return view


def _from_pretrained(loader, name_or_path: str, role: str, **kw):
    try:
        return loader.from_pretrained(name_or_path, **kw)
    except OSError as e:
        where = "local directory" if os.path.isdir(name_or_path) else "local path or a cached hub name"
        raise FileNotFoundError(
            f"{role} {name_or_path!r} could not be loaded: it is not a {where} holding a model "
            f"(without network only local directories and already-cached hub models load). Cause: {e}"
        ) from e


def load_target(
    name_or_path: str, *, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a target: a LLaVA checkpoint (``model_type == "llava"``), any causal LM, or a model known
    by name (:data:`specdec.named_models.NAMED_MODELS`, e.g. ``"smollm2-135m"``), in eval mode."""
    tf = _transformers()
    name_or_path = named_models.resolve(name_or_path)
    if not os.path.exists(name_or_path) and name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"target {name_or_path!r}: no such file or directory")
    cfg = _from_pretrained(tf.AutoConfig, name_or_path, "target")
    kw = {"dtype": _dtype(dtype)} if dtype is not None else {}
    if getattr(cfg, "model_type", None) == "llava":
        model = _from_pretrained(tf.LlavaForConditionalGeneration, name_or_path, "target", **kw)
    else:
        model = _from_pretrained(tf.AutoModelForCausalLM, name_or_path, "target", **kw)
    return model.to(device).eval()


def load_drafter(
    name_or_path: str, *, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a drafter: a :class:`CompactLlavaDrafter` directory, any causal LM, or a named model
    (e.g. ``"smollm2-drafter"``), in eval mode."""
    name_or_path = named_models.resolve(name_or_path)
    if os.path.isfile(os.path.join(name_or_path, COMPACT_DRAFTER_FILE)):
        return CompactLlavaDrafter.from_pretrained(name_or_path, dtype=_dtype(dtype)).to(device).eval()
    if not os.path.exists(name_or_path) and name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"drafter {name_or_path!r}: no such file or directory")
    kw = {"dtype": _dtype(dtype)} if dtype is not None else {}
    model = _from_pretrained(_transformers().AutoModelForCausalLM, name_or_path, "drafter", **kw)
    return model.to(device).eval()


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
    }
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]
