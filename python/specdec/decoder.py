"""The speculative decoder: draft, verify the whole chain or tree in ONE target forward, roll back or
compact both KV caches, repeat (docs/algorithms.md §1-4, 6, 8, 9), for a batch of B rows at once
(docs/batching.md). Exact for every method: the emitted tokens follow the target's law under the
requested temperature / top-k / top-p, and at temperature 0 they equal the target's greedy decoding.

The loop is method-agnostic: a strategy (specdec.strategies) drafts and verifies, the model adapters
(specdec.adapter) forward and keep the KV entries, specdec.plans says which entries stay."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import nn

from specdec_kernels import policies as _policies

from .adapter import SequenceCache
from .drafting import Draft, Sampler
from .hf_attention import language_model, use_tree_attention
from .models import CompactLlavaDrafter, count_parameters, cut_output_vocab, image_token_id, is_multimodal
from .prompt_lookup import PromptLookup
from .strategies import AutoRegressive, Beam, Chain, Lookup, Round, Strategy, Tree

#: Methods: "ar" target alone (the baseline); "sd" chain; "specinfer" i.i.d. tree; "rsd_c" Gumbel-Top-k
#: tree (constant branching); "rsd_s" Stochastic Beam Search tree (width x depth).
METHODS = ("ar", "sd", "specinfer", "rsd_c", "rsd_s")
#: Draft-length policies for chains (specdec_kernels.policies).
POLICIES = {"static": None, "adaedl": _policies.AdaEDL, "confidence": _policies.MaxConfidence}
#: Verification rules for chains ("sd"): "token" accepts draft by draft (docs/algorithms.md §1);
#: "block" judges the drafted block jointly (§9, block verification), never fewer accepted tokens in
#: expectation. Both emit exactly the target's law (the ``rule`` of specdec_kernels.verify_chain).
VERIFY_RULES = ("token", "block")


@dataclass
class GenerationStats:
    """What one generate call measured, over all its rows.

    batch_size: rows (B). steps: batch rounds (one target forward each, for every row still
    decoding). rounds: verification rounds summed over rows (for "ar": tokens). target_calls:
    target forwards, prefill included. drafted: drafted tokens (tree nodes) proposed; accepted:
    drafted tokens emitted. new_tokens: tokens appended to the prompts, all rows. block_efficiency
    (tau): tokens emitted per row per round, before the max_new_tokens / EOS cut. acceptance_rate:
    accepted / drafted depth (per round, a chain's K or a tree's depth). draft_depth: mean drafted
    depth per row per round (gamma of MBSU). param_ratio (c): drafter / target parameters. mbsu:
    tau / (c * draft_depth + 1), the memory-bound speed-up. tokens_per_s: new_tokens / wall_s
    (all rows). Times in seconds: wall (after loading), and, when phases are timed (``timings``
    of generate: by default on the CPU, where timing costs nothing; on CUDA every timing point
    synchronises the device), draft (drafter forwards and drafting ops), target (target
    forwards), verify (sampling_probs + verification op), cache (KV keep plans, compaction);
    forward_s: inside the forwards of both models (prefill excluded); overhead_s: wall time of
    the rounds outside any model forward, per step; target_forward_s: mean time of one target
    forward (prefill excluded); copied: drafted tokens copied from the context (prompt lookup,
    alone or with ``lookup=``); verify: the decoder's chain verification rule, "token" or
    "block" (``verify=``; "token" for "ar" and the tree methods).
    """

    rounds: int = 0
    target_calls: int = 0
    drafter_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0
    block_efficiency: float = 0.0
    acceptance_rate: float = 0.0
    draft_depth: float = 0.0
    param_ratio: float = 0.0
    mbsu: float = 0.0
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    draft_s: float = 0.0
    target_s: float = 0.0
    verify_s: float = 0.0
    cache_s: float = 0.0
    forward_s: float = 0.0
    overhead_s: float = 0.0
    target_forward_s: float = 0.0
    copied: int = 0
    verify: str = "token"
    batch_size: int = 1
    steps: int = 0
    emitted_per_round: list[int] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("emitted_per_round")
        return d


@dataclass
class GenerationResult:
    """sequences: int64 [B, P + T]: the input ids as given, then each row's new tokens, right-padded
    with ``pad_token_id`` to the longest row's T (as Hugging Face generate returns them);
    new_tokens: each row's generated tokens, without padding; stats: :class:`GenerationStats`."""

    sequences: torch.Tensor
    stats: GenerationStats
    new_tokens: list[list[int]] = field(default_factory=list)


@dataclass
class RoundEvent:
    """What an observer sees after each batch round (nothing is synchronised or copied for it
    beyond what the round computed anyway).

    rows: the batch row of each row still decoding this round, in the adapters' row order;
    emitted / accepted / drafted: per row, the tokens it committed this round (after the EOS /
    budget cut), its accepted drafts and its drafted tokens (tree nodes); committed: each row's
    committed tokens so far (its prompt's real tokens, then its new tokens); target / drafter:
    the adapters (:class:`specdec.adapter.SequenceCache`), read-only by convention.
    """

    round: int
    rows: list[int]
    emitted: list[list[int]]
    accepted: list[int]
    drafted: list[int]
    committed: list[list[int]]
    target: SequenceCache
    drafter: SequenceCache | None


class Observer(Protocol):
    """Optional per-round callback of :meth:`SpeculativeDecoder.generate` (``observer=``)."""

    def on_round(self, event: RoundEvent) -> None: ...


class _Clock:
    """Phase timing: perf_counter on the CPU; on CUDA a device sync first, so only when asked."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self.sync = enabled and device.type == "cuda"

    def now(self) -> float:
        if not self.enabled:
            return 0.0
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


class SpeculativeDecoder:
    """Exact speculative decoding of a Hugging Face target (LLaVA or causal LM) with a drafter, for one
    prompt or a batch (:meth:`generate`).

    Args:
        target: ``LlavaForConditionalGeneration`` or any causal LM (see :func:`specdec.load_target`).
        drafter: a causal LM sharing the target's tokenizer (text-only: with a LLaVA target its prompt
            is the target's without the image tokens, so it needs no vision tower), a
            :class:`~specdec.CompactLlavaDrafter`, or a :class:`~specdec.PromptLookup` (n-gram drafts
            from the context, no model: a chain for "sd", a trie for the tree methods, verified as
            deterministic drafts); None only for ``method="ar"``. Vocabulary sizes may differ:
            tokens the drafter lacks get zero draft probability.
        method: one of :data:`METHODS`.
        gamma: chain length for "sd" (the policy's maximum).
        branching: tuple of children per level for "specinfer" / "rsd_c", e.g. (2, 2, 2).
        width, depth: for "rsd_s": W expansions kept per level, L levels.
        draft_vocab: the drafter scores only the token ids below this (its output layer cut to
            those rows, shared with the model, not copied): one draft step reads that much less of
            the head, which dominates a small drafter's step at a large vocabulary. Other tokens get
            draft probability 0, so the output keeps the target's law; it pays where ids are in
            frequency order (BPE merges): see docs/real_model.md.
        tree_attention: "auto" (default: "fused" for a CUDA target that supports it, else "bias"),
            "fused" (verify trees with :func:`specdec_kernels.tree_attention` inside the target: no
            dense mask) or "bias" (a dense additive mask through the target's own attention; on the
            CPU the faster of the two in the decoder, see benchmarks/batch_speed.py).
        policy: "static", "adaedl" or "confidence" (chains only); ``policy_kwargs`` go to
            :class:`specdec_kernels.policies.AdaEDL` / ``MaxConfidence`` (e.g. ``lam=0.5``; AdaEDL's
            entropy coefficient ``gamma`` is ``entropy_gamma`` here, as ``gamma`` is the chain length).
        lookup: a :class:`~specdec.PromptLookup` to combine with a drafter model for "sd": a round
            whose text so far ends in an n-gram seen earlier in the context copies up to
            ``lookup_gamma`` tokens that followed it instead of drafting; a chain whose drafted
            tokens complete such an n-gram ends with the copy. Copies are one-hot drafts, so the
            output keeps the target's law. Pays where the output repeats its prompt or itself
            (greedy decoding especially); ``PromptLookup(min_ngram=3)`` copies only after three
            matching tokens.
        verify: the chain verification rule of "sd" (:data:`VERIFY_RULES`), with every policy and
            with prompt lookup (alone or as ``lookup=``): "token" (default) accepts draft by draft
            (docs/algorithms.md §1); "block" judges the drafted block jointly (§9, block
            verification, Sun et al. 2024): never fewer accepted tokens per round in expectation,
            and the output keeps exactly the target's law. Tree methods verify with their own rules
            and "ar" verifies nothing, so "block" is refused there. At temperature 0 nothing changes:
            block verification of one-hot targets is the argmax rule, and both verify greedily.

    Example:
        >>> dec = SpeculativeDecoder(target, drafter, method="rsd_s", width=4, depth=3)  # doctest: +SKIP
        >>> out = dec.generate(input_ids, pixel_values=pixels, max_new_tokens=64, temperature=0.7, seed=0)
    """

    def __init__(
        self,
        target: nn.Module,
        drafter: nn.Module | None = None,
        *,
        method: str = "sd",
        gamma: int = 5,
        branching: tuple[int, ...] | list[int] | None = None,
        width: int | None = None,
        depth: int | None = None,
        policy: str = "static",
        tree_attention: str = "auto",
        lookup: PromptLookup | None = None,
        lookup_gamma: int = 10,
        draft_vocab: int | None = None,
        verify: str = "token",
        **policy_kwargs,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(verify, str) or verify not in VERIFY_RULES:
            raise ValueError(f"verify must be one of {VERIFY_RULES}, got {verify!r}")
        if verify != "token" and method != "sd":
            why = "'ar' verifies no drafts" if method == "ar" else "tree methods verify with their own rule"
            raise ValueError(f"verify={verify!r} applies to chains (method 'sd'), not {method!r}: {why}")
        if tree_attention not in ("auto", "fused", "bias"):
            raise ValueError(f"tree_attention must be 'auto', 'fused' or 'bias', got {tree_attention!r}")
        if tree_attention == "fused" and language_model(target) is None:
            raise ValueError(
                "tree_attention='fused' needs a target whose (language) model takes transformers "
                "attention implementations (AttentionInterface); use 'auto' or 'bias'"
            )
        # fused: the whole-tree verification forward runs specdec_kernels.tree_attention inside the
        # target (no dense mask); bias: a dense additive [1, 1, N, L + N] mask through the model's own
        # attention. Chains and the drafter's level-by-level forwards never need the fused path.
        # "auto" fuses on CUDA only: on the CPU the dense mask through SDPA measured faster in the
        # decoder (one SDPA call per layer against the fused op's per-row flash calls and merge):
        # SmolLM2-135M rsd_s W3 L3 fused was 2-12% slower at B = 1 and 17-19% at B = 8
        # (benchmarks/results/batch-speed-amd-epyc-2-cpus-2026-12-07-0d089f6-summary.csv)
        on_cuda = next(target.parameters()).device.type == "cuda"
        self.fused = (
            (tree_attention == "fused" or (tree_attention == "auto" and on_cuda))
            and method in ("specinfer", "rsd_c", "rsd_s")
            and language_model(target) is not None
        )
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {tuple(POLICIES)}, got {policy!r}")
        if method != "ar" and drafter is None:
            raise ValueError(f"method {method!r} needs a drafter")
        if policy != "static" and method != "sd":
            raise ValueError(f"policy {policy!r} applies to chains (method 'sd'), not {method!r}")
        if policy_kwargs and policy == "static":
            raise ValueError(
                f"unexpected keyword arguments {sorted(policy_kwargs)} (policy 'static' takes none)"
            )
        self.target = target
        self.drafter = drafter if method != "ar" else None
        self.method = method
        self.verify = verify
        self.branching: tuple[int, ...] | None = None
        self.width = self.depth = None
        if method == "sd":
            self.gamma = _positive_int(gamma, "gamma")
        if method in ("specinfer", "rsd_c"):
            if branching is None or isinstance(branching, (str, int)) or len(branching) == 0:
                raise ValueError(
                    f"method {method!r} needs branching, a non-empty tuple such as (2, 2), got {branching!r}"
                )
            self.branching = tuple(_positive_int(b, "branching entries") for b in branching)
            self.depth = len(self.branching)
        if method == "rsd_s":
            self.width = _positive_int(width, "width")
            self.depth = _positive_int(depth, "depth")
        self.policy_name = policy
        self._policy_kwargs = dict(policy_kwargs)
        if method == "sd":
            self._make_policy()  # fail early on bad policy arguments
        self._device = next(target.parameters()).device
        self.multimodal = is_multimodal(target)
        self.image_token_id = image_token_id(target)
        if isinstance(self.drafter, CompactLlavaDrafter) and not self.multimodal:
            raise ValueError(
                "a CompactLlavaDrafter needs a LLaVA target (it reads the target's image features)"
            )
        self.lookup = self.drafter if isinstance(self.drafter, PromptLookup) else None
        if self.lookup is not None and policy != "static":
            raise ValueError(
                f"policy {policy!r} reads a drafter's laws; prompt lookup has none (use 'static')"
            )
        if lookup is not None:
            if not isinstance(lookup, PromptLookup):
                raise ValueError(
                    f"lookup must be a specdec.PromptLookup or None, got {type(lookup).__name__}"
                )
            if self.lookup is not None or self.drafter is None or method != "sd":
                raise ValueError(
                    "lookup= combines prompt lookup with a drafter model for method 'sd'; "
                    f"got method {method!r} with drafter {type(drafter).__name__}"
                )
        self.copy = lookup
        self.lookup_gamma = _positive_int(lookup_gamma, "lookup_gamma")
        self._draft_model = self.drafter
        if draft_vocab is not None:
            if self.drafter is None or self.lookup is not None:
                raise ValueError("draft_vocab applies to a drafter model")
            self._draft_model = cut_output_vocab(self.drafter, _positive_int(draft_vocab, "draft_vocab"))
        self.param_ratio = (
            (count_parameters(self.drafter) / count_parameters(target))
            if self.drafter is not None and self.lookup is None
            else 0.0
        )

    def _make_policy(self):
        cls = POLICIES[self.policy_name]
        if cls is None:
            return _policies.StaticLength(self.gamma)
        kw = dict(self._policy_kwargs)
        if "entropy_gamma" in kw:  # AdaEDL's entropy coefficient; `gamma` is the chain length here
            if cls is not _policies.AdaEDL:
                raise ValueError(f"entropy_gamma applies to policy 'adaedl', not {self.policy_name!r}")
            kw["gamma"] = kw.pop("entropy_gamma")
        elif "max_len" in kw or "gamma" in kw:
            raise ValueError(
                "the chain length is the decoder's gamma; AdaEDL's entropy coefficient is entropy_gamma"
            )
        try:
            return cls(max_len=self.gamma, **kw)
        except TypeError as e:
            raise ValueError(f"bad arguments for policy {self.policy_name!r}: {e}") from e

    # ------------------------------------------------------------------------------------------

    def _strategy(self) -> Strategy:
        """A fresh strategy object for this decoder's method (per generate call: it holds per-row
        state such as a policy's thresholds)."""
        if self.method == "ar":
            return AutoRegressive()
        if self.lookup is not None:
            return Lookup(self.lookup, self.method == "sd", gamma=getattr(self, "gamma", 0),
                          depth=self.depth or 0, branching=self.branching, width=self.width)
        if self.method == "sd":
            return Chain(self.gamma, self._make_policy, self.copy, self.lookup_gamma)
        if self.method == "rsd_s":
            return Beam(self.width, self.depth)
        return Tree(self.branching, replacement=self.method == "specinfer")

    # ------------------------------------------------------------------------------------------

    def _check_inputs(self, input_ids, pixel_values, attention_mask) -> tuple[torch.Tensor, list[list[int]]]:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError("input_ids must be an int64 tensor [B, P]")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, P] with B, P >= 1, got shape {list(input_ids.shape)}")
        B = input_ids.shape[0]
        rows = input_ids.tolist()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or list(attention_mask.shape) != list(
                input_ids.shape
            ):
                got = attention_mask.shape if isinstance(attention_mask, torch.Tensor) else attention_mask
                raise ValueError(f"attention_mask must have the shape of input_ids {list(input_ids.shape)}, "
                                 f"got {got!r}")
            keep = attention_mask.bool().tolist()
            for b in range(B):
                if not any(keep[b]):
                    raise ValueError(f"attention_mask masks every prompt token of row {b}")
            # padding (left, as Hugging Face pads for generation, or anywhere) is dropped
            rows = [[t for t, k in zip(r, m, strict=True) if k] for r, m in zip(rows, keep, strict=True)]
        img = self.image_token_id
        if pixel_values is not None:
            if not self.multimodal:
                raise ValueError("pixel_values were given but the target is a text-only model")
            if not (isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4
                    and pixel_values.shape[0] == B):
                got = list(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else pixel_values
                raise ValueError(f"pixel_values must be [B, 3, H, W] with B = {B} (one image per row), "
                                 f"got {got}")
            for b, r in enumerate(rows):
                if img not in r:
                    raise ValueError(
                        f"pixel_values were given but row {b} of input_ids holds no image token "
                        f"(id {img}); use the target's processor to build the prompt"
                    )
        elif self.multimodal and any(img in r for r in rows):
            raise ValueError(f"input_ids hold image tokens (id {img}) but pixel_values is None")
        return input_ids, rows

    def _prefill(self, target: SequenceCache, drafter: SequenceCache | None, prompts: list[list[int]],
                 pixel_values) -> None:
        feats: list[torch.Tensor] = []
        kw = {}
        hook = None
        if pixel_values is not None:
            kw["pixel_values"] = pixel_values.to(target.device, target.dtype)
            if isinstance(self.drafter, CompactLlavaDrafter):
                proj = self.target.model.multi_modal_projector
                hook = proj.register_forward_hook(lambda m, args, out: feats.append(args[0].detach()))
        try:
            target.prefill(prompts, **kw)
        finally:
            if hook is not None:
                hook.remove()
        if drafter is None:
            return
        if isinstance(self.drafter, CompactLlavaDrafter):
            drafter.prefill(prompts, **({"image_features": feats[0]} if feats else {}))
        else:
            # the text-only drafter sees the prompts without their image tokens
            img = self.image_token_id
            bos = getattr(self.drafter.config, "bos_token_id", None)
            dprompts = []
            for p in prompts:
                d = [t for t in p if t != img] if img is not None else p
                dprompts.append(d or [int(bos) if isinstance(bos, int) else 0])
            drafter.prefill(dprompts)

    def _pad_id(self, model) -> int | None:
        """A padding id for the rows of a forward: never the image token (LLaVA counts those)."""
        if self.image_token_id is None:
            return None
        unk = getattr(model.config, "unk_token_id", None)
        return next(t for t in (unk, 0, 1) if isinstance(t, int) and t >= 0 and t != self.image_token_id)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | Sequence[int] = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | Sequence[int] | None = None,
        eos_token_id: int | None = None,
        streamer: Callable[..., None] | None = None,
        *,
        pad_token_id: int | None = None,
        observer: Observer | None = None,
        timings: bool | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after each row of ``input_ids``.

        Rows are decoded together: one drafter forward per draft step and one target forward per
        round for all rows, each row with its own acceptance, KV length, budget, EOS and seed. A
        row that finishes leaves the batch; no row waits for another.

        Args:
            input_ids: int64 [B, P], image tokens expanded as the target's processor does; rows of
                different lengths padded (left, as Hugging Face pads for generation) and masked.
            pixel_values: [B, 3, H, W], one image per row, for a LLaVA target.
            attention_mask: [B, P] or None; masked (padding) tokens are dropped.
            max_new_tokens: >= 1, or one per row.
            temperature: 0 = greedy (equal to the target's greedy decoding); > 0 samples exactly from
                the target's law after temperature, ``top_k`` (0 = off) and ``top_p`` (1 = off).
            seed: makes a sampled run reproducible: an int (row b uses ``seed + b``) or one per row
                (a row's tokens depend on its own seed only); None: drawn from torch's generator.
            eos_token_id: a row stops right after this token (None: no EOS stop).
            streamer: called after each round with the tokens a row committed: ``streamer(tokens)``
                for B = 1, ``streamer(tokens, row)`` for B > 1.
            pad_token_id: fills ``sequences`` past a row's end (default: ``eos_token_id``, else 0).
            observer: ``observer.on_round(RoundEvent)`` after every round (see :class:`RoundEvent`).
            timings: time the phases into the stats (default: on the CPU yes, on CUDA no, where
                each timing point synchronises the device).

        Returns:
            GenerationResult(sequences [B, P + T] int64, stats, new_tokens).
        """
        input_ids, prompts = self._check_inputs(input_ids, pixel_values, attention_mask)
        B = len(prompts)
        if isinstance(max_new_tokens, (list, tuple)):
            if len(max_new_tokens) != B:
                raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for {B} rows")
            budgets = [_positive_int(m, "max_new_tokens entries") for m in max_new_tokens]
        else:
            budgets = [_positive_int(max_new_tokens, "max_new_tokens")] * B
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        seeds = self._row_seeds(seed, B)
        for name, v in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{name} must be an int or None, got {v!r}")
        if streamer is not None and not callable(streamer):
            raise ValueError("streamer must be callable")
        if observer is not None and not callable(getattr(observer, "on_round", None)):
            raise ValueError("observer must have an on_round(event) method")
        pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
        timed = (self._device.type != "cuda") if timings is None else bool(timings)
        sampler = Sampler(temperature, top_k, top_p, seeds, self._device)
        with use_tree_attention(self.target) if self.fused else contextlib.nullcontext():
            out, stats = self._generate(prompts, pixel_values, budgets, sampler, eos_token_id, streamer,
                                        observer, timed)
        T = max(len(o) for o in out)
        new = torch.full((B, T), pad, dtype=input_ids.dtype, device=input_ids.device)
        for b, o in enumerate(out):
            if o:
                new[b, : len(o)] = torch.tensor(o, dtype=input_ids.dtype)
        return GenerationResult(torch.cat([input_ids, new], 1), stats, out)

    @staticmethod
    def _row_seeds(seed, B: int) -> list[int]:
        if seed is None:
            base = int(torch.randint(0, 2**62, (1,)).item())
            return [(base + b) % 2**63 for b in range(B)]
        if isinstance(seed, (list, tuple)):
            if len(seed) != B:
                raise ValueError(f"seed has {len(seed)} entries for {B} rows")
            vals = list(seed)
        else:
            vals = [seed]
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
                raise ValueError(f"seed must be an int in [0, 2**63) or one per row, got {seed!r}")
        if len(vals) == 1 and not isinstance(seed, (list, tuple)):
            return [(seed + b) % 2**63 for b in range(B)]
        return vals

    def _generate(self, prompts, pixel_values, budgets, sampler: Sampler, eos, streamer, observer, timed):
        B = len(prompts)
        stats = GenerationStats(param_ratio=self.param_ratio, verify=self.verify, batch_size=B)
        clock = _Clock(self._device, timed)
        t_wall = time.perf_counter()
        target = SequenceCache(self.target, fused_tree_attention=self.fused, timed=timed,
                               pad_id=self._pad_id(self.target))
        drafter = None
        if self.drafter is not None and self.lookup is None:
            # the target's vocabulary: its output layer, not config.vocab_size (may be padded)
            out_emb = self.target.get_output_embeddings()
            vocab = out_emb.out_features if out_emb is not None else None
            drafter = SequenceCache(self._draft_model, vocab, timed=timed, pad_id=self._pad_id(self.drafter))
        tp = clock.now()
        self._prefill(target, drafter, prompts, pixel_values)
        t_loop = clock.now()
        stats.target_s += t_loop - tp
        t_pre, d_pre = target.forward_s, drafter.forward_s if drafter else 0.0
        pre_calls = target.calls
        strategy = self._strategy()
        strategy.begin(B, self._device)

        rows = list(range(B))
        out: list[list[int]] = [[] for _ in range(B)]
        committed = [list(p) for p in prompts]
        remaining = list(budgets)
        # prompt lookup's n-gram index over each row's text (image placeholders left out: they repeat)
        ngrams = self.lookup or self.copy
        indices = None
        if ngrams is not None:
            indices = [ngrams.index([t for t in p if t != self.image_token_id]) for p in prompts]
        depth_sum = 0
        step = 0
        while rows:
            t0 = clock.now()
            rnd = Round(rows=list(rows), roots=[committed[r][-1] for r in rows],
                        budgets=[remaining[r] - 1 for r in rows], sampler=sampler, drafter=drafter,
                        indices=[indices[r] for r in rows] if indices is not None else None)
            draft = strategy.draft(rnd)
            t1 = clock.now()
            stats.draft_s += t1 - t0
            logits = self._target_logits(target, draft)
            t2 = clock.now()
            stats.target_s += t2 - t1
            verdict = strategy.verify(draft, logits, sampler, rows, self.verify)
            t3 = clock.now()
            stats.verify_s += t3 - t2
            target.keep(target.plan_keep(verdict.accepted_nodes, verdict.num_accepted),
                        [t[-1:] for t in verdict.tokens])
            if drafter is not None:
                plan = drafter.plan_keep(verdict.accepted_nodes.to(drafter.device),
                                         verdict.num_accepted.to(drafter.device))
                kept = plan.num_kept.tolist()
                drafter.keep(plan, [t[k:] for t, k in zip(verdict.tokens, kept, strict=True)])
            strategy.observe(draft, verdict)
            stats.cache_s += clock.now() - t3

            step += 1
            drafted = draft.num_drafted
            emitted_rows: list[list[int]] = []
            done: list[bool] = []
            for i, r in enumerate(rows):
                toks = verdict.tokens[i]
                stats.rounds += 1
                stats.accepted += len(verdict.nodes[i])
                stats.drafted += drafted[i]
                stats.copied += draft.copied[i] if draft.copied else 0
                stats.emitted_per_round.append(len(toks))
                depth_sum += draft.depth[i]
                emitted = toks[: remaining[r]]
                if eos is not None and eos in emitted:
                    emitted = emitted[: emitted.index(eos) + 1]
                out[r] += emitted
                committed[r] += emitted
                remaining[r] -= len(emitted)
                if indices is not None:
                    indices[r].extend(emitted)
                if streamer is not None:
                    streamer(list(emitted)) if B == 1 else streamer(list(emitted), r)
                emitted_rows.append(emitted)
                done.append(remaining[r] == 0 or (eos is not None and emitted[-1] == eos))
            if observer is not None:
                observer.on_round(RoundEvent(step, list(rows), emitted_rows, [len(x) for x in verdict.nodes],
                                             drafted, [committed[r] for r in rows], target, drafter))
            if any(done):
                keep = [i for i in range(len(rows)) if not done[i]]
                rows = [rows[i] for i in keep]
                if keep:
                    target.select_rows(keep)
                    if drafter is not None:
                        drafter.select_rows(keep)
                    strategy.select_rows(keep)

        t_end = clock.now()
        stats.wall_s = time.perf_counter() - t_wall
        stats.steps = step
        stats.forward_s = target.forward_s - t_pre + (drafter.forward_s - d_pre if drafter else 0.0)
        if timed:
            stats.overhead_s = (t_end - t_loop - stats.forward_s) / max(step, 1)
        stats.target_forward_s = (target.forward_s - t_pre) / max(target.calls - pre_calls, 1)
        stats.target_calls = target.calls
        stats.drafter_calls = drafter.calls if drafter is not None else 0
        stats.new_tokens = sum(len(o) for o in out)
        stats.block_efficiency = sum(stats.emitted_per_round) / max(stats.rounds, 1)
        stats.draft_depth = depth_sum / max(stats.rounds, 1)
        stats.acceptance_rate = stats.accepted / depth_sum if depth_sum else 0.0
        stats.mbsu = stats.block_efficiency / (stats.param_ratio * stats.draft_depth + 1)
        stats.tokens_per_s = stats.new_tokens / stats.wall_s if stats.wall_s > 0 else 0.0
        return out, stats

    @staticmethod
    def _target_logits(target: SequenceCache, draft: Draft) -> torch.Tensor:
        """The target's logits over the drafts: ``[B, N, V]``, row i's law after node j at [i, j]."""
        trees = draft.trees
        N = trees.tokens.shape[1]
        if draft.chain:
            counts = trees.num_nodes.tolist()
            tok = trees.tokens.tolist()
            logits, first = target.forward_chains([tok[i][1 : counts[i]] for i in range(len(counts))])
            f0 = first[0]
            if all(f == f0 for f in first) and f0 - 1 + N <= logits.shape[1]:
                return logits[:, f0 - 1 : f0 - 1 + N]  # a view: no copy of [B, N, V]
            idx = torch.tensor([[min(f - 1 + j, logits.shape[1] - 1) for j in range(N)] for f in first],
                               dtype=torch.long, device=logits.device)
            return logits.gather(1, idx[:, :, None].expand(-1, -1, logits.shape[-1]))
        return target.forward_tree(trees.tokens, trees.parents, trees.num_nodes, [0] * trees.tokens.shape[0])
