"""HookedAVModel: the LLM decoder of an audio-visual LLM, reimplemented with TransformerLens hook points.

A forward call flows: processor batch -> HF encoders (reused, shared weights) -> placeholder merge ->
hooked blocks (fused SDPA unless a hook needs the pattern) -> final norm -> unembedding.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from hooked_av.model.adapter import FamilyAdapter, load_adapter_class
from hooked_av.model.activation_cache import AVActivationCache
from hooked_av.model.components import AttentionMask, RMSNorm, RotaryEmbedding, fire
from hooked_av.model.errors import InputError, PlaceholderMismatchError, UnknownHookError, check_layer
from hooked_av.model.family_spec import FamilySpec, family_for_hf_model, family_spec_from
from hooked_av.model.kv_cache import KVCache, SharedPrefixKVCache
from hooked_av.model.modality import Modality, ModalityMap, build_modality_map

HookList = Sequence[tuple[str | Callable[[str], bool], Callable]]
MODALITY_HOOKS = {Modality.AUDIO: "hook_audio_embeds", Modality.IMAGE: "hook_image_embeds",
                  Modality.VIDEO: "hook_video_embeds"}


@dataclass
class Prompt:
    """A batch after embedding: what the decoder needs, plus where each modality sits."""

    input_ids: Int[Tensor, "batch pos"]
    inputs_embeds: Float[Tensor, "batch pos d_model"]
    positions: Int[Tensor, "axes batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    modality_map: ModalityMap
    # Features added to the residual stream after block l (Qwen3's DeepStack), zero outside their slots.
    injections: dict[int, Float[Tensor, "batch pos d_model"]] = field(default_factory=dict)


@dataclass
class DecodeState:
    """What decoding continues from: the KV cache, the mask over its keys, the next rotary position, logits."""

    cache: KVCache | SharedPrefixKVCache
    attention_mask: Int[Tensor, "batch keys"]
    next_pos: Int[Tensor, "axes batch 1"]
    logits: Float[Tensor, "batch vocab"]


@dataclass
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    # over the tokens generated so far (HF's RepetitionPenaltyLogitsProcessor); None: the family's default, 1: off
    repetition_penalty: float | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def penalize(self, logits: Tensor, history: list[Tensor], default: float | None) -> Tensor:
        """Divide positive (multiply negative) logits of every token in `history` by the penalty."""
        penalty = self.repetition_penalty if self.repetition_penalty is not None else default
        if penalty is None or penalty == 1.0 or not history:
            return logits
        seen = torch.stack(history, dim=1)
        score = logits.gather(-1, seen)
        return logits.scatter(-1, seen, torch.where(score < 0, score * penalty, score / penalty))

    def next_token(self, logits: Tensor) -> Tensor:
        if not self.do_sample:
            return logits.argmax(dim=-1)
        if self.generator is None and self.seed is not None:
            self.generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        logits = logits.float() / max(self.temperature, 1e-5)
        if self.top_k is not None:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs > self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generator)[:, 0]


@dataclass
class GenerationOutput:
    sequences: Int[Tensor, "batch total"]  # prompt followed by the generated tokens (pad after a stop token)
    new_tokens: Int[Tensor, "batch new"]
    text: list[str]  # the generated tokens decoded, special tokens skipped (needs the processor's tokenizer)
    modality_map: ModalityMap  # prompt + generated positions
    prompt_length: int


class HookedAVModel(HookedRootModule):
    """TransformerLens-style hooked model of an AVLLM's decoder; build with from_pretrained / from_hf_model."""

    def __init__(self, adapter: FamilyAdapter):
        super().__init__()
        self.adapter = adapter
        self.cfg = cfg = adapter.decoder_config()
        modules = adapter.spec.decoder_modules
        self.embed = adapter.module(modules["embed"])
        self.hook_embed = HookPoint()  # [batch, pos, d_model], token embeddings (placeholders included)
        self.hook_audio_embeds = HookPoint()  # [n_audio_tokens, d_model], all audio items in order
        self.hook_image_embeds = HookPoint()  # [n_image_tokens, d_model]
        self.hook_video_embeds = HookPoint()  # [n_video_tokens, d_model]
        self.hook_inputs_embeds = HookPoint()  # [batch, pos, d_model], after the merge
        self.hook_pos_ids = HookPoint()  # [axes, batch, pos] rotary positions (TMRoPE for Omni)
        self.encoders = nn.ModuleDict(adapter.encoder_modules())
        self.rotary = RotaryEmbedding(cfg)
        self.blocks = nn.ModuleList(adapter.build_blocks(cfg))
        self.ln_final = RMSNorm(adapter.module(modules["norm"]).weight, cfg.eps)
        self.unembed = adapter.module(modules["unembed"])
        self.token_roles = adapter.token_roles()
        self.setup()
        self.eval()

    def setup(self) -> None:
        # As HookedRootModule.setup, but the HF encoders' own modules are left untouched (no `name` attribute).
        self.mod_dict, self.hook_dict = {}, {}
        for name, module in self.named_modules():
            if not name or name.startswith("encoders."):
                continue
            module.name = name
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_hf_model(cls, hf_model: nn.Module, processor: Any = None,
                      family: str | Path | FamilySpec | None = None) -> HookedAVModel:
        """Wrap an HF model already in memory; its weight tensors are shared, not copied.

        family: the path of your own family YAML (or a FamilySpec) instead of the built-in model_configs/.
        """
        specs = None if family is None else (family_spec_from(family),)
        spec = family_for_hf_model(hf_model, specs)
        inner = getattr(hf_model, spec.wrappers[type(hf_model).__name__]) if type(hf_model).__name__ in \
            spec.wrappers else hf_model
        return cls(load_adapter_class(spec)(spec, inner, processor))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, processor: Any = "auto",
                        family: str | Path | FamilySpec | None = None) -> HookedAVModel:
        """Load a local HF checkpoint folder (safetensors only); the family is read from its config.json.

        processor="auto" loads the processor when the folder has one; pass an object to use it, or None.
        family: the path of your own family YAML (or a FamilySpec), validated as the built-in ones; it must
        match the folder's config.json.
        """
        from hooked_av.model.loading import load_hf_model, load_processor

        spec = None if family is None else family_spec_from(family)
        adapter_class = None if spec is None else load_adapter_class(spec)  # a bad adapter fails before loading
        hf_model, spec = load_hf_model(Path(path), device=device, dtype=dtype, spec=spec)
        if processor == "auto":
            processor = load_processor(Path(path), spec)
        return cls((adapter_class or load_adapter_class(spec))(spec, hf_model, processor))

    # ---- TransformerLens surface ----------------------------------------------------------------------
    @property
    def processor(self) -> Any:
        return self.adapter.processor

    @property
    def tokenizer(self) -> Any:
        return None if self.processor is None else self.processor.tokenizer

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.weight

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.weight.T

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        w = self.unembed.weight
        return self.unembed.bias if self.unembed.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                                  device=w.device)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def to_single_token(self, string: str) -> int:
        ids = self.adapter.require_processor("to_single_token").tokenizer.encode(string, add_special_tokens=False)
        if len(ids) != 1:
            raise InputError(f"{string!r} is {len(ids)} tokens, not one: {ids}")
        return ids[0]

    def to_tokens(self, input: str | list[str], video: Any = None, audio: Any = None, image: Any = None, *,
                  chat_template: bool = True, **prepare_kwargs: Any) -> Int[Tensor, "batch pos"]:
        """input_ids [batch, pos] of a prompt as the model reads it: in the chat template, with one placeholder
        token per encoder feature of each media item (`prepare_inputs(...)["input_ids"]`).

        chat_template=False tokenises the bare text (no template, no special tokens added; no media).
        """
        if chat_template:
            return self.prepare_inputs(input, video=video, audio=audio, image=image, **prepare_kwargs)["input_ids"]
        if any(m is not None for m in (video, audio, image)):
            raise InputError("media need the chat template, which writes their placeholders: drop "
                             "chat_template=False, or tokenise text only")
        tokenizer = self.adapter.require_processor("to_tokens").tokenizer
        texts = [input] if isinstance(input, str) else list(input)
        return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                         add_special_tokens=False)["input_ids"].to(self.device)

    def _input_ids(self, input: Any, media: dict[str, Any]) -> Int[Tensor, "batch pos"]:
        """input_ids of a string (chat template + media), a processor batch or a tensor of ids."""
        if is_text(input):
            return self.to_tokens(input, **media)
        return self._gather_inputs(input, {})["input_ids"]

    def to_str_tokens(self, input: Any, video: Any = None, audio: Any = None, image: Any = None,
                      **prepare_kwargs: Any) -> list[str] | list[list[str]]:
        """One string per position: a list for one sequence, a list of lists for a batch of several.

        input: a prompt (chat template and media applied, as `to_tokens`), a processor batch or token ids.
        Special tokens and placeholders are shown as they are (`<|AUDIO|>`).
        """
        ids = self._input_ids(input, dict(video=video, audio=audio, image=image, **prepare_kwargs))
        tokenizer = self.adapter.require_processor("to_str_tokens").tokenizer
        rows = [[tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in row] for row in ids.tolist()]
        return rows[0] if len(rows) == 1 else rows

    def to_string(self, tokens: Int[Tensor, "... pos"] | Sequence[int]) -> str | list[str]:
        """Decoded text of token ids, special tokens kept: a string for one id or 1-D ids, a list for a batch."""
        tokenizer = self.adapter.require_processor("to_string").tokenizer
        tokens = torch.as_tensor(tokens)
        if tokens.ndim <= 1:
            return tokenizer.decode(tokens.tolist(), clean_up_tokenization_spaces=False)
        return tokenizer.batch_decode(tokens.tolist(), clean_up_tokenization_spaces=False)

    def get_token_position(self, single_token: str | int, input: Any, mode: Literal["first", "last"] = "first",
                           video: Any = None, audio: Any = None, image: Any = None, **prepare_kwargs: Any) -> int:
        """Position of the first (or last) occurrence of a token in one sequence.

        input: a prompt (chat template and media applied, as `to_tokens`), a processor batch or token ids.
        """
        if mode not in ("first", "last"):
            raise InputError(f"mode must be 'first' or 'last', got {mode!r}")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        ids = self._input_ids(input, dict(video=video, audio=audio, image=image, **prepare_kwargs))
        if ids.shape[0] != 1:
            raise InputError(f"get_token_position takes one sequence, got a batch of {ids.shape[0]}")
        hits = (ids[0] == token).nonzero().flatten()
        if hits.numel() == 0:
            raise InputError(f"token {single_token!r} (id {token}) is not in the input")
        return int(hits[0] if mode == "first" else hits[-1])

    def tokens_to_residual_directions(self, tokens: str | int | Tensor) -> Tensor:
        """Unembedding directions [..., d_model] in the space of `ln_final.hook_normalized`.

        The final norm's weight is folded in (as TransformerLens does with fold_ln), so that logit attributions
        of components scaled by `apply_ln_to_stack` sum to the model's logits exactly.
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.device)
        return (self.ln_final.w[:, None] * self.W_U)[:, tokens].movedim(0, -1)

    def _enable_hook(self, name: str | Callable, hook: Callable, dir: Literal["fwd", "bwd"]) -> None:
        super()._enable_hook(self.hook_name(name) if isinstance(name, str) else name, hook, dir)

    def add_hook(self, name: str | Callable, hook: Callable, *args: Any, **kwargs: Any) -> None:
        super().add_hook(self.hook_name(name) if isinstance(name, str) else name, hook, *args, **kwargs)

    def hook_name(self, name: str) -> str:
        """The hook point's name in `hook_dict`: a negative layer is counted from the end (`blocks.-1.…` is the
        last block). A layer out of range raises LayerIndexError; a name that is no hook point raises
        UnknownHookError with the closest names (same layer)."""
        if name in self.hook_dict:
            return name
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blocks" and parts[1].lstrip("-").isdigit():
            layer = check_layer(int(parts[1]), self.cfg.n_layers)
            name = f"blocks.{layer}.{parts[2]}"
            if name in self.hook_dict:
                return name
            candidates = [n for n in self.hook_dict if n.startswith(f"blocks.{layer}.")]
        else:
            candidates = [n for n in self.hook_dict if not n.startswith("blocks.")]
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        raise UnknownHookError(f"unknown hook name {name!r}." + (f" Did you mean one of {close}?" if close else "")
                               + " model.hook_dict lists every hook point.")

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> tuple[Any, AVActivationCache]:
        """As TransformerLens' run_with_cache; the cache is an AVActivationCache with the modality map."""
        names_filter = kwargs.get("names_filter")
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple)):  # TransformerLens would silently cache nothing for a typo
            kwargs["names_filter"] = [self.hook_name(n) for n in names_filter]
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        batch = self._gather_inputs(model_args[0] if model_args else None,
                                    {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS})
        return out, AVActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False),
                                      modality_map=self.modality_map(batch), input_ids=batch["input_ids"])

    # ---- inputs ----------------------------------------------------------------------------------------
    def prepare_inputs(self, prompt: str | list[str] | None = None, video: Any = None, audio: Any = None,
                       image: Any = None, *, use_audio_in_video: bool = False, fps: float = 2.0,
                       **kwargs: Any) -> dict[str, Any]:
        """The chat-templated processor batch for a prompt and media (arrays, or file paths read with PyAV).

        video: uint8 frames (T, H, W, 3) sampled at `fps`, or a file; audio: float32 mono 16 kHz, or a file;
        image: uint8 (H, W, 3), or a file. A list of prompts (with lists of media) makes a left-padded batch.
        A family with its own message format (MiniCPM-o: `messages=`) takes it instead of a prompt.
        """
        if prompt is None and kwargs.get("messages") is None:
            raise InputError("prepare_inputs needs a prompt (or, for families that take them, messages=...)")
        if "messages" in kwargs and "messages" not in inspect.signature(self.adapter.prepare_inputs).parameters:
            raise InputError(f"the {self.cfg.family} family takes a prompt with media, not messages=...")
        batch = self.adapter.prepare_inputs(prompt, video=video, audio=audio, image=image,
                                            use_audio_in_video=use_audio_in_video, fps=fps, **kwargs)
        return self._to_device(batch)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def _gather_inputs(self, batch: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if batch is None:
            merged = dict(kwargs)
        elif isinstance(batch, Tensor):
            merged = {"input_ids": batch, **kwargs}
        elif is_text(batch):  # as TransformerLens' model("text"), but a chat model reads a chat turn
            merged = {**self.prepare_inputs(batch), **kwargs}
        elif isinstance(batch, Mapping):
            merged = {**dict(batch), **kwargs}
        else:
            raise InputError(f"the model takes a string, a list of strings, a processor batch (dict) or input_ids, "
                             f"not {type(batch).__name__}")
        ids = merged.get("input_ids")
        if ids is None:
            raise InputError("no input_ids: pass the processor's batch, model(batch) or model(**batch)")
        if ids.ndim == 1:
            merged["input_ids"] = ids[None]
        return self._to_device(merged)

    def modality_map(self, batch: Any = None, **inputs: Any) -> ModalityMap:
        """Which positions of a batch are video, audio, image, prompt text, template or special tokens."""
        merged = self._gather_inputs(batch, inputs)
        ids = merged["input_ids"]
        return build_modality_map(ids, merged.get("attention_mask"), self.token_roles,
                                  self.adapter.placeholder_masks(ids))

    def embed_prompt(self, batch: Any = None, **inputs: Any) -> Prompt:
        """Token embeddings with encoder features merged in, rotary positions and the modality map."""
        merged = self._gather_inputs(batch, inputs)
        ids = merged["input_ids"]
        embeds = fire(self.hook_embed, self.embed(ids))
        encoded = self.adapter.encode_all(merged)
        features = encoded.features
        injections: dict[int, Tensor] = {}
        placeholder_masks = self.adapter.placeholder_masks(ids)
        for modality, slots in placeholder_masks.items():
            feats = features.get(modality)
            n_slots = int(slots.sum())
            if feats is None:
                if n_slots:
                    raise PlaceholderMismatchError(
                        f"input_ids hold {n_slots} {modality.name.lower()} placeholder tokens but the batch has no "
                        f"{modality.name.lower()} input; pass the processor's full output")
                continue
            feats = fire(getattr(self, MODALITY_HOOKS[modality]), feats.to(embeds.dtype))
            if feats.shape[0] != n_slots:
                raise PlaceholderMismatchError(
                    f"{n_slots} {modality.name.lower()} placeholder tokens but the {modality.name.lower()} encoder "
                    f"returned {feats.shape[0]} features: input_ids and media do not belong together "
                    "(run the processor on the same media, with the same settings)")
            embeds = embeds.masked_scatter(slots[..., None], feats)
            for layer, per_modality in encoded.after_block.items():
                if modality in per_modality:
                    injections[layer] = injections.get(layer, torch.zeros_like(embeds)).masked_scatter(
                        slots[..., None], per_modality[modality].to(embeds.dtype))
        attention_mask = merged.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(ids)
        merged["attention_mask"] = attention_mask
        positions = fire(self.hook_pos_ids, self.adapter.position_ids(merged))
        return Prompt(ids, fire(self.hook_inputs_embeds, embeds), positions, attention_mask,
                      build_modality_map(ids, attention_mask, self.token_roles, placeholder_masks), injections)

    # ---- the decoder -----------------------------------------------------------------------------------
    def run_blocks(self, inputs_embeds: Tensor, positions: Tensor, attention_mask: Tensor,
                   kv_cache: KVCache | None = None,
                   injections: dict[int, Tensor] | None = None) -> Float[Tensor, "batch pos d_model"]:
        """The hooked blocks and final norm; with a KV cache, `inputs_embeds` are the positions after it.

        `injections[l]` [batch, pos, d_model] is added after block l (see `TransformerBlock`)."""
        batch, q_len, _ = inputs_embeds.shape
        k_len = q_len + (kv_cache.length if kv_cache is not None else 0)
        if attention_mask.shape[-1] != k_len:
            raise InputError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {k_len}")
        key_padding = None if bool(attention_mask.all()) else attention_mask.bool()
        mask = AttentionMask(key_padding, batch, q_len, k_len, inputs_embeds.dtype, inputs_embeds.device)
        cos, sin = self.rotary(positions, inputs_embeds.dtype)
        resid = inputs_embeds
        injections = injections or {}
        for layer, block in enumerate(self.blocks):
            resid = block(resid, cos, sin, mask, kv_cache, injections.get(layer))
        if kv_cache is not None:
            kv_cache.commit(q_len)
        return self.ln_final(resid)

    def forward(self, batch: Any = None, /, *, return_type: Literal["logits", "loss", "both"] | None = "logits",
                **inputs: Any) -> Tensor | tuple[Tensor, Tensor] | None:
        """Logits [batch, pos, d_vocab] for a processor batch: model(batch) or model(**batch).

        A string (or list of strings) is first wrapped in the chat template as a user turn, as
        `prepare_inputs(text)` does. return_type="loss": mean next-token cross-entropy over text targets (padding
        and placeholder targets excluded); "both": (logits, loss), as TransformerLens; None runs the model for
        its hooks only.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise InputError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        prompt = self.embed_prompt(batch, **inputs)
        logits = self.unembed(self.run_blocks(prompt.inputs_embeds, prompt.positions, prompt.attention_mask,
                                              injections=prompt.injections))
        if return_type == "logits":
            return logits
        if return_type == "loss":
            return next_token_loss(logits, prompt)
        if return_type == "both":
            return logits, next_token_loss(logits, prompt)
        return None

    # ---- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: Any = None, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 stop_token_ids: Sequence[int] | None = None, fwd_hooks: HookList = (),
                 decode_fwd_hooks: HookList = (), seed: int | None = None, repetition_penalty: float | None = None,
                 **inputs: Any) -> GenerationOutput:
        """KV-cached generation in which hooks fire on the prefill and on every decode step.

        `fwd_hooks` apply to the prefill and every decode step; `decode_fwd_hooks` only to decode steps, so a
        pattern hook there costs one 1 x N row per head and step while the prefill stays on fused attention.
        Greedy output equals HF `generate` with the same stop tokens. `repetition_penalty` (over the generated
        tokens only) defaults to the family's (`FamilyAdapter.repetition_penalty`: none, except for families whose
        official greedy path keeps the checkpoint's, as VideoLLaMA2); 1.0 turns it off.
        """
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}: generate produces tokens; "
                             "for the prompt's logits alone call model(batch)")
        sampling = Sampling(do_sample, temperature, top_k, top_p, seed, repetition_penalty)
        stops = self.stop_tensor(stop_token_ids)
        with self.hooks(fwd_hooks=list(fwd_hooks)):
            prompt = self.embed_prompt(batch, **inputs)
            state = self.prefill(prompt, max_new_tokens)
            with self.hooks(fwd_hooks=list(decode_fwd_hooks)):
                generated = self.decode(state, max_new_tokens, sampling, stops)
        return self.generation_output(prompt, generated, stops)

    def stop_tensor(self, stop_token_ids: Sequence[int] | None = None) -> Tensor:
        ids = list(stop_token_ids) if stop_token_ids is not None else self.adapter.stop_token_ids()
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def prefill(self, prompt: Prompt, max_new_tokens: int) -> DecodeState:
        """Run the prompt into a fresh KV cache sized for `max_new_tokens` more positions."""
        if not bool(prompt.attention_mask[:, -1].all()):
            raise InputError("generation needs left padding: a row of attention_mask ends in 0. Pad with "
                             "padding_side='left' (model.prepare_inputs does)")
        n_batch, prompt_len = prompt.attention_mask.shape
        cache = KVCache(self.cfg.n_layers, n_batch, self.cfg.n_key_value_heads, prompt_len + max_new_tokens,
                        self.cfg.d_head, prompt.inputs_embeds.dtype, self.device)
        resid = self.run_blocks(prompt.inputs_embeds, prompt.positions, prompt.attention_mask, cache,
                                prompt.injections)
        return DecodeState(cache, prompt.attention_mask, next_position(prompt), self.unembed(resid[:, -1]))

    def decode(self, state: DecodeState, max_new_tokens: int, sampling: Sampling, stops: Tensor) -> Tensor:
        """Sample up to `max_new_tokens` tokens [batch, new] from a prefilled state; rows pad after a stop token."""
        pad = self.adapter.pad_token_id()
        finished = torch.zeros(state.logits.shape[0], dtype=torch.bool, device=self.device)
        new_tokens: list[Tensor] = []
        logits, attention_mask, next_pos = state.logits, state.attention_mask, state.next_pos
        penalty = self.adapter.repetition_penalty()
        for step in range(max_new_tokens):
            logits = sampling.penalize(logits, new_tokens, penalty)
            token = torch.where(finished, pad, sampling.next_token(logits))
            new_tokens.append(token)
            finished = finished | torch.isin(token, stops)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            embeds = fire(self.hook_inputs_embeds, fire(self.hook_embed, self.embed(token[:, None])))
            logits = self.unembed(self.run_blocks(embeds, next_pos, attention_mask, state.cache)[:, -1])
            next_pos = next_pos + 1
        return torch.stack(new_tokens, dim=1)

    def generation_output(self, prompt: Prompt, generated: Tensor, stops: Tensor) -> GenerationOutput:
        text = (self.tokenizer.batch_decode(generated, skip_special_tokens=True) if self.tokenizer is not None
                else [""] * generated.shape[0])
        return GenerationOutput(sequences=torch.cat([prompt.input_ids.expand(generated.shape[0], -1), generated],
                                                    dim=1),
                                new_tokens=generated, text=text,
                                modality_map=prompt.modality_map.extend(generated.shape[1],
                                                                        after_stop(generated, stops)),
                                prompt_length=prompt.input_ids.shape[1])


_CACHE_KWARGS = {"names_filter", "device", "remove_batch_dim", "incl_bwd", "reset_hooks_end", "clear_contexts",
                 "pos_slice", "return_type"}


def is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) > 0
                                      and all(isinstance(v, str) for v in value))


def next_position(prompt: Prompt) -> Int[Tensor, "axes batch 1"]:
    """The rotary position of the first generated token: the row's largest prompt position + 1, on every axis
    (HF's "rope delta" rule). It is not always the last position + 1: after audio interleaved into video,
    Qwen3-Omni resumes from the end of the last run, which can lie inside the video block's range."""
    valid = prompt.attention_mask.bool()[None].expand_as(prompt.positions)
    top = prompt.positions.masked_fill(~valid, float("-inf") if prompt.positions.is_floating_point() else -1)
    return (top.amax(dim=(0, 2), keepdim=True) + 1).expand(prompt.positions.shape[0], -1, -1)


def after_stop(generated: Tensor, stops: Tensor) -> Tensor:
    """[batch, new] True at generated positions after a row's first stop token (filled with padding)."""
    is_stop = torch.isin(generated, stops).int()
    return (is_stop.cumsum(dim=1) - is_stop) > 0


def next_token_loss(logits: Tensor, prompt: Prompt) -> Tensor:
    """Mean next-token cross-entropy over text targets; padding and modality placeholders are not targets."""
    valid = prompt.modality_map.mask("text", "template", "special", "generated")[:, 1:]
    return F.cross_entropy(logits[:, :-1][valid].float(), prompt.input_ids[:, 1:][valid])
