"""The speculative decoder: draft, verify the whole chain or tree in ONE target forward, roll back or
compact both KV caches, repeat (docs/algorithms.md §1-4, 6, 8, 9). Exact for every method: the emitted
tokens follow the target's law under the requested temperature / top-k / top-p, and at temperature 0
they equal the target's greedy decoding."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import specdec_kernels as sk
from specdec_kernels import policies as _policies

from .drafting import Draft, Sampler, draft_chain, draft_tree
from .hf_attention import language_model, use_tree_attention
from .models import (
    CompactLlavaDrafter,
    SequenceCache,
    count_parameters,
    cut_output_vocab,
    image_token_id,
    is_multimodal,
)
from .prompt_lookup import NgramIndex, PromptLookup

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
    """What one generate call measured.

    rounds: verification rounds (for "ar": tokens). target_calls: target forwards, prefill included.
    drafted: drafted tokens (tree nodes) proposed; accepted: drafted tokens emitted. new_tokens:
    tokens appended to the prompt. block_efficiency (tau): tokens emitted per round, before the
    max_new_tokens / EOS cut. acceptance_rate: accepted / drafted depth (per round, a chain's K or a
    tree's depth). draft_depth: mean drafted depth per round (gamma of MBSU). param_ratio (c):
    drafter / target parameters. mbsu: tau / (c * draft_depth + 1), the memory-bound speed-up.
    tokens_per_s: new_tokens / wall_s. Times in seconds: wall (after loading), draft (drafter
    forwards and drafting ops), target (target forwards), verify (sampling_probs + verification
    op), cache (rollback / compaction); forward_s: inside the forwards of both models (prefill
    excluded); overhead_s: wall time of the rounds outside any model forward, per round;
    target_forward_s: mean time of one target forward (prefill excluded); copied: drafted tokens
    copied from the context (prompt lookup, alone or with ``lookup=``); verify: the decoder's chain
    verification rule, "token" or "block" (``verify=``; "token" for "ar" and the tree methods). On
    CUDA every timing point synchronises the device, which costs a little speed.
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
    emitted_per_round: list[int] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("emitted_per_round")
        return d


@dataclass
class GenerationResult:
    """sequences: int64 [1, prompt + new], the prompt included (as Hugging Face generate returns it);
    stats: :class:`GenerationStats`."""

    sequences: torch.Tensor
    stats: GenerationStats


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.sync = device.type == "cuda"

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


class SpeculativeDecoder:
    """Exact speculative decoding of a Hugging Face target (LLaVA or causal LM) with a drafter.

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
        tree_attention: "auto" (default: "fused" where the target supports it), "fused" (verify
            trees with :func:`specdec_kernels.tree_attention` inside the target: no dense mask) or
            "bias" (a dense additive mask through the target's own attention).
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
        self.fused = (
            tree_attention != "bias"
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

    def _check_inputs(self, input_ids, pixel_values, attention_mask):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError("input_ids must be an int64 tensor [1, P]")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [1, P] with P >= 1, got shape {list(input_ids.shape)}")
        if input_ids.shape[0] != 1:
            raise ValueError(
                f"batch size must be 1 (input_ids has {input_ids.shape[0]} rows); batched "
                "speculative decoding is not supported yet"
            )
        prompt = input_ids[0].tolist()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or list(attention_mask.shape) != list(
                input_ids.shape
            ):
                raise ValueError(f"attention_mask must have the shape of input_ids {list(input_ids.shape)}")
            keep = attention_mask[0].bool().tolist()
            if not any(keep):
                raise ValueError("attention_mask masks every prompt token")
            prompt = [t for t, k in zip(prompt, keep, strict=True) if k]  # batch 1: padding is dropped
        if pixel_values is not None:
            if not self.multimodal:
                raise ValueError("pixel_values were given but the target is a text-only model")
            if self.image_token_id not in prompt:
                raise ValueError(
                    f"pixel_values were given but input_ids hold no image token "
                    f"(id {self.image_token_id}); use the target's processor to build the prompt"
                )
        elif self.multimodal and self.image_token_id in prompt:
            raise ValueError(
                f"input_ids hold image tokens (id {self.image_token_id}) but pixel_values is None"
            )
        return input_ids, prompt

    def _prefill(self, target: SequenceCache, drafter: SequenceCache | None, prompt: list[int], pixel_values):
        feats: list[torch.Tensor] = []
        kw = {}
        hook = None
        if pixel_values is not None:
            kw["pixel_values"] = pixel_values.to(target.device, target.dtype)
            if isinstance(self.drafter, CompactLlavaDrafter):
                proj = self.target.model.multi_modal_projector
                hook = proj.register_forward_hook(lambda m, args, out: feats.append(args[0].detach()))
        try:
            target.prefill(prompt, **kw)
        finally:
            if hook is not None:
                hook.remove()
        if drafter is None:
            return
        if isinstance(self.drafter, CompactLlavaDrafter):
            drafter.prefill(prompt, image_features=feats[0] if feats else None)
        else:
            # the text-only drafter sees the prompt without its image tokens
            dprompt = (
                [t for t in prompt if t != self.image_token_id] if self.image_token_id is not None else prompt
            )
            if not dprompt:
                bos = getattr(self.drafter.config, "bos_token_id", None)
                dprompt = [int(bos) if isinstance(bos, int) else 0]
            drafter.prefill(dprompt)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | None = None,
        streamer: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after ``input_ids``.

        Args:
            input_ids: int64 [1, P] (batch 1), image tokens expanded as the target's processor does.
            pixel_values: [1, 3, H, W] for a LLaVA target with an image in the prompt.
            attention_mask: [1, P] or None; masked (padding) tokens are dropped.
            max_new_tokens: >= 1.
            temperature: 0 = greedy (equal to the target's greedy decoding); > 0 samples exactly from
                the target's law after temperature, ``top_k`` (0 = off) and ``top_p`` (1 = off).
            seed: makes a sampled run reproducible (None: drawn from torch's global generator).
            eos_token_id: generation stops right after this token (None: no EOS stop).
            streamer: called with the list of newly committed token ids after each round.

        Returns:
            GenerationResult(sequences [1, P + new] int64, stats).
        """
        input_ids, prompt = self._check_inputs(input_ids, pixel_values, attention_mask)
        max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")

        sampler = Sampler(temperature, top_k, top_p, seed)
        with use_tree_attention(self.target) if self.fused else contextlib.nullcontext():
            return self._generate(
                input_ids, prompt, pixel_values, max_new_tokens, sampler, eos_token_id, streamer
            )

    def _generate(
        self, input_ids, prompt, pixel_values, max_new_tokens, sampler: Sampler, eos_token_id, streamer
    ) -> GenerationResult:
        stats = GenerationStats(param_ratio=self.param_ratio, verify=self.verify)
        target = SequenceCache(self.target, fused_tree_attention=self.fused)
        clock = _Clock(target.device)
        t0 = clock.now()
        vocab = None
        drafter = None
        tp = clock.now()
        if self.drafter is not None and self.lookup is None:
            # the target's vocabulary: its output layer, not config.vocab_size (may be padded)
            out_emb = self.target.get_output_embeddings()
            vocab = out_emb.out_features if out_emb is not None else None
            drafter = SequenceCache(self._draft_model, vocab)
        self._prefill(target, drafter, prompt, pixel_values)
        t_loop = clock.now()
        stats.target_s += t_loop - tp
        t_pre, d_pre, prefill_calls = target.forward_s, drafter.forward_s if drafter else 0.0, target.calls
        policy = self._make_policy() if self.method == "sd" and self.lookup is None else None

        out: list[int] = []
        depth_sum = 0
        # prompt lookup's n-gram index over the text (image placeholders left out: they repeat)
        index = None
        ngrams = self.lookup or self.copy
        if ngrams is not None:
            index = ngrams.index([t for t in prompt if t != self.image_token_id])
        last = prompt[-1]
        while len(out) < max_new_tokens:
            remaining = max_new_tokens - len(out)
            if self.method == "ar" or remaining == 1:
                emitted = self._ar_step(target, drafter, sampler, stats, clock)
                accepted = 0
            else:
                emitted, accepted, depth = self._spec_round(
                    target, drafter, last, sampler, policy, stats, clock, remaining - 1, index
                )
                depth_sum += depth
            stats.rounds += 1
            stats.accepted += accepted
            stats.emitted_per_round.append(len(emitted))
            emitted = emitted[:remaining]
            if eos_token_id is not None and eos_token_id in emitted:
                emitted = emitted[: emitted.index(eos_token_id) + 1]
                remaining = 0
            out += emitted
            last = out[-1]
            if index is not None:
                index.extend(emitted)
            if streamer is not None:
                streamer(list(emitted))
            if remaining == 0 or (eos_token_id is not None and emitted[-1] == eos_token_id):
                break

        t_end = clock.now()
        stats.wall_s = t_end - t0
        stats.forward_s = target.forward_s - t_pre + (drafter.forward_s - d_pre if drafter else 0.0)
        stats.overhead_s = (t_end - t_loop - stats.forward_s) / max(stats.rounds, 1)
        stats.target_forward_s = (target.forward_s - t_pre) / max(target.calls - prefill_calls, 1)
        stats.target_calls = target.calls
        stats.drafter_calls = drafter.calls if drafter is not None else 0
        stats.new_tokens = len(out)
        stats.block_efficiency = sum(stats.emitted_per_round) / max(stats.rounds, 1)
        stats.draft_depth = depth_sum / max(stats.rounds, 1)
        stats.acceptance_rate = stats.accepted / depth_sum if depth_sum else 0.0
        stats.mbsu = stats.block_efficiency / (stats.param_ratio * stats.draft_depth + 1)
        stats.tokens_per_s = stats.new_tokens / stats.wall_s if stats.wall_s > 0 else 0.0
        new = torch.tensor([out], dtype=input_ids.dtype, device=input_ids.device)
        return GenerationResult(torch.cat([input_ids, new], 1), stats)

    # ------------------------------------------------------------------------------------------

    def _ar_step(
        self,
        target: SequenceCache,
        drafter: SequenceCache | None,
        sampler: Sampler,
        stats: GenerationStats,
        clock: _Clock,
    ) -> list[int]:
        """One target step (the "ar" method, and the last token of a budget)."""
        t = clock.now()
        row = target.logits_through()[-1]
        t1 = clock.now()
        stats.target_s += t1 - t
        tok = int(row.argmax()) if sampler.greedy else int(sampler.draw(row[None], None, 1)[0, 0])
        stats.verify_s += clock.now() - t1
        target.pending = [tok]
        if drafter is not None:
            drafter.pending.append(tok)
        return [tok]

    def _spec_round(
        self,
        target: SequenceCache,
        drafter: SequenceCache,
        last: int,
        sampler: Sampler,
        policy,
        stats: GenerationStats,
        clock: _Clock,
        budget: int,
        index: NgramIndex | None = None,
    ) -> tuple[list[int], int, int]:
        """Draft (at most ``budget`` deep), verify in one target forward, keep the accepted path."""
        t = clock.now()
        chain = self.method == "sd"
        copied = None
        if self.copy is not None:
            # the text so far repeats an n-gram of the context: copy what followed it (one-hot drafts;
            # whether a round copies depends on the committed text only, so it stays exact) and
            # leave the drafter idle; it catches up on the emitted tokens in its next forward
            copied = self.copy.chain(index, min(self.lookup_gamma, budget)) or None
        if copied is not None:
            draft = Draft(
                torch.tensor([[last, *copied]], dtype=torch.long, device=self._device),
                torch.arange(-1, len(copied), dtype=torch.long, device=self._device)[None],
                None, -1, 0, len(copied), copied=len(copied),
            )  # fmt: skip
        elif self.lookup is not None:
            draft = self._lookup_draft(index, last, budget)
            if draft is None:  # nothing to copy: one plain target step
                stats.draft_s += clock.now() - t
                return self._ar_step(target, None, sampler, stats, clock), 0, 0
            chain = draft.depth == draft.num_drafted  # a trie with one path is a chain
        elif chain:
            copy = None
            if self.copy is not None:
                # ... or as soon as the drafted tokens complete a repeated n-gram
                def copy(drafted: list[int]) -> list[int]:
                    return self.copy.chain_after(
                        index, drafted, min(self.lookup_gamma, budget - len(drafted))
                    )

            draft: Draft = draft_chain(drafter, last, sampler, policy, min(self.gamma, budget), copy)
        else:
            depth = min(self.depth, budget)
            draft = draft_tree(
                drafter,
                last,
                sampler,
                branching=self.branching,
                width=self.width,
                depth=depth,
                replacement=self.method == "specinfer",
            )
        t1 = clock.now()
        stats.draft_s += t1 - t
        stats.drafted += draft.num_drafted
        stats.copied += draft.copied

        root_t = target.root_slot()
        if chain:
            logits = target.logits_through(draft.tokens[0, 1:].tolist())
        else:
            logits = target.tree_logits(draft.tokens, draft.parents, 0, draft.tokens.shape[1])
        t2 = clock.now()
        stats.target_s += t2 - t1

        K = draft.num_drafted
        if chain:
            d = draft.tokens[:, 1:]
            if sampler.greedy:  # verify="block" too: block verification of one-hot targets is argmax
                res = sk.verify_chain_greedy(d, logits[None], check=False)
            else:
                res = sk.verify_chain(
                    d,
                    sampler.probs(logits)[None],
                    None if draft.q is None else draft.q[:, :K],
                    seed=sampler.seed,
                    offset=sampler.take(sk.VERIFY_CHAIN_OFFSET_STRIDE),
                    rule=self.verify,
                    check=False,
                )
            n = int(res.num_accepted[0])
            nodes = list(range(1, n + 1))
        else:
            if sampler.greedy:
                res = sk.verify_tree_greedy(draft.tokens, draft.parents, logits[None], check=False)
            else:
                res = sk.verify_tree(
                    draft.tokens,
                    draft.parents,
                    sampler.probs(logits)[None],
                    draft.q,
                    replacement=self.method == "specinfer",
                    seed=sampler.seed,
                    offset=sampler.take(sk.VERIFY_TREE_OFFSET_STRIDE),
                    check=False,
                )
            n = int(res.num_accepted[0])
            nodes = res.accepted_nodes[0, :n].tolist()
        toks = res.tokens[0, : n + 1].tolist()
        t3 = clock.now()
        stats.verify_s += t3 - t2

        target.accept(root_t, K, nodes, toks[:n], toks[n], chain)
        if copied is not None:
            drafter.pending += toks  # the drafter catches up in its next forward
        elif drafter is not None:
            drafter.accept(draft.root, draft.forwarded, nodes, toks[:n], toks[n], chain)
        if policy is not None and copied is None:
            policy.update(n, K)
        stats.cache_s += clock.now() - t3
        return toks, n, draft.depth

    def _lookup_draft(self, index: NgramIndex, last: int, budget: int) -> Draft | None:
        """Prompt lookup's draft for this round: a chain for "sd", a trie for the tree methods
        (None when the context holds no match)."""
        if self.method == "sd":
            toks = self.lookup.chain(index, min(self.gamma, budget))
            if not toks:
                return None
            tokens, parents, depth = [last, *toks], list(range(-1, len(toks))), len(toks)
        else:
            tokens, parents, depth = self.lookup.tree(
                index, min(self.depth, budget), branching=self.branching, width=self.width
            )
            if len(tokens) == 1:
                return None
        t_tok = torch.tensor([tokens], dtype=torch.long, device=self._device)
        t_par = torch.tensor([parents], dtype=torch.long, device=self._device)
        return Draft(t_tok, t_par, None, -1, 0, depth, copied=len(tokens) - 1)
