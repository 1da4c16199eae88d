"""What every family adapter shares: building the hooked decoder from the HF model's own modules.

A family subclass writes only what the YAML cannot say: how its encoders are called, how position ids are
computed, and how the processor is driven by `prepare_inputs`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hooked_av.model.components import Attention, GatedMLP, RMSNorm, TransformerBlock
from hooked_av.model.config import HookedAVConfig, rope_axis_of_channel
from hooked_av.model.errors import InputError, MissingProcessorError, ModelConfigError, UnsupportedCheckpointError
from hooked_av.model.family_spec import FamilySpec
from hooked_av.model.modality import Modality, TokenRoles, roles_from_tokenizer
from hooked_av.model.moe import SparseMoeMLP

Batch = dict[str, Any]


@dataclass
class EncoderOutput:
    """What the encoders give the decoder: features per modality ([n_tokens, d_model], items concatenated in
    order), scattered into the placeholder slots; and, for families that add encoder features to the residual
    stream after some blocks (Qwen3's DeepStack), `after_block[l][modality]` [n_tokens, d_model], added after
    block l at the same slots."""

    features: dict[Modality, Tensor]
    after_block: dict[int, dict[Modality, Tensor]] = field(default_factory=dict)


def dotted_get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


class FamilyAdapter:
    """Binds one family's HF model (thinker / VLM in memory) to the generic hooked core."""

    # Name of the residual injection after blocks (`blocks.{l}.hook_{injection}`), for `injection_layers()`.
    injection: str | None = None

    def __init__(self, spec: FamilySpec, hf_model: nn.Module, processor: Any = None):
        self.spec = spec
        self.hf_model = hf_model
        self.processor = processor
        self.hf_config = hf_model.config
        self.text_config = dotted_get(self.hf_config, spec.text_config)

    # ---- decoder, generic -------------------------------------------------------------------------------
    def decoder_config(self) -> HookedAVConfig:
        tc = self.text_config
        n_heads = tc.num_attention_heads
        d_head = getattr(tc, "head_dim", None) or tc.hidden_size // n_heads
        try:
            sections = dotted_get(tc, self.spec.rope.sections_from) if self.spec.rope.sections_from else None
        except (KeyError, AttributeError) as err:  # HF may fall back to a default layout silently
            raise UnsupportedCheckpointError(f"{self.spec.name}: the HF text config lacks the rotary sections "
                                             f"'{self.spec.rope.sections_from}'") from err
        rope = tc.rope_parameters
        try:
            axes = rope_axis_of_channel(self.spec.rope.kind, d_head, sections)
        except ValueError as err:
            raise UnsupportedCheckpointError(f"{self.spec.name}: the HF config's rotary layout does not fit: {err}") \
                from err
        return HookedAVConfig(
            n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=n_heads,
            n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=tc.intermediate_size,
            d_vocab=tc.vocab_size, eps=tc.rms_norm_eps, rope_theta=rope["rope_theta"],
            rope_axis_of_channel=axes,
            act_fn=self.spec.act_fn, family=self.spec.name, dtype=self.hf_model.dtype)

    def module(self, path: str) -> nn.Module:
        return self.hf_model.get_submodule(path)

    def build_blocks(self, cfg: HookedAVConfig) -> list[TransformerBlock]:
        names = self.spec.layer_modules
        blocks = []
        injected = set(self.injection_layers())
        for layer, hf_layer in enumerate(self.module(self.spec.decoder_modules["layers"])):
            part = hf_layer.get_submodule
            qk_norm = [RMSNorm(part(names[n]).weight, cfg.eps) if n in names else None for n in ("q_norm", "k_norm")]
            attn = Attention(cfg, layer, part(names["q"]), part(names["k"]), part(names["v"]), part(names["o"]),
                             *qk_norm)
            mlp = self.build_mlp(cfg, hf_layer)
            blocks.append(TransformerBlock(RMSNorm(part(names["ln1"]).weight, cfg.eps), attn,
                                           RMSNorm(part(names["ln2"]).weight, cfg.eps), mlp,
                                           self.injection if layer in injected else None))
        return blocks

    def build_mlp(self, cfg: HookedAVConfig, hf_layer: nn.Module) -> nn.Module:
        """A `SparseMoeMLP` over the HF router and experts where the layer has them, else the dense gated MLP.

        The HF router module gives `top_k` and `norm_topk_prob` (as Qwen2/3-MoE's TopKRouter holds them).
        """
        names = self.spec.layer_modules
        if "experts" in names and _has_submodule(hf_layer, names["experts"]):
            router = hf_layer.get_submodule(names["router"])
            return SparseMoeMLP(router.weight, hf_layer.get_submodule(names["experts"]), router.top_k,
                                getattr(router, "norm_topk_prob", True))
        return GatedMLP(hf_layer.get_submodule(names["gate"]), hf_layer.get_submodule(names["up"]),
                        hf_layer.get_submodule(names["down"]), cfg.act_fn)

    def injection_layers(self) -> tuple[int, ...]:
        """Blocks after which `encode_all` may add features to the residual stream; none by default."""
        return ()

    def encoder_modules(self) -> dict[str, nn.Module]:
        return {name: self.module(path) for name, path in self.spec.encoders.items()}

    # ---- tokens -----------------------------------------------------------------------------------------
    def placeholder_ids(self) -> dict[Modality, int]:
        return {Modality.parse(m): int(getattr(self.hf_config, attr)) for m, attr in self.spec.placeholders.items()}

    def placeholder_masks(self, input_ids: Tensor) -> dict[Modality, Tensor]:
        """[batch, pos] True at the slots each modality's features fill. By default a placeholder token id per
        modality; a family whose modalities share one placeholder token (told apart by the markers around
        it) overrides this."""
        return {modality: input_ids == token_id for modality, token_id in self.placeholder_ids().items()}

    def token_roles(self) -> TokenRoles:
        placeholders = self.placeholder_ids()
        if self.processor is not None:
            return roles_from_tokenizer(self.processor.tokenizer, placeholders, self.spec.turn_start,
                                        self.spec.turn_end)
        # Without a tokenizer: every *_token_id / *_token_index the HF config names is special.
        specials = {v for c in (self.hf_config, self.text_config) for k, v in vars(c).items()
                    if k.endswith(("_token_id", "_token_index")) and isinstance(v, int)}
        return TokenRoles(placeholders=placeholders, special_ids=frozenset(specials - set(placeholders.values())))

    def stop_token_ids(self) -> list[int]:
        if self.processor is not None:
            vocab = self.processor.tokenizer.get_vocab()
            return [vocab[t] for t in self.spec.stop_tokens if t in vocab]
        eos = getattr(self.hf_model.generation_config, "eos_token_id", None) or self.text_config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def pad_token_id(self) -> int:
        if self.processor is not None and self.processor.tokenizer.pad_token_id is not None:
            return self.processor.tokenizer.pad_token_id
        pad = getattr(self.hf_model.generation_config, "pad_token_id", None)
        return pad if pad is not None else (self.stop_token_ids() or [0])[0]

    def repetition_penalty(self) -> float | None:
        """The repetition penalty greedy decoding applies by default (over generated tokens), None for none."""
        return None

    def require_processor(self, what: str) -> Any:
        if self.processor is None:
            raise MissingProcessorError(
                f"{what} needs the HF processor, and this model has none. Pass processor=... to "
                "HookedAVModel.from_hf_model, or load a checkpoint folder that holds the processor files "
                "(processor_config.json / tokenizer files), or build the batch with the processor yourself.")
        return self.processor

    # ---- family-specific --------------------------------------------------------------------------------
    def encode(self, batch: Batch) -> dict[Modality, Tensor]:
        """Encoder outputs projected to d_model, per modality, items concatenated in order: [n_tokens, d]."""
        raise NotImplementedError

    def encode_all(self, batch: Batch) -> EncoderOutput:
        """What the decoder takes from the encoders; families with residual injections override this."""
        return EncoderOutput(self.encode(batch))

    def position_ids(self, batch: Batch) -> Tensor:
        """Rotary positions of the prompt, [axes, batch, pos]."""
        raise NotImplementedError

    def prepare_inputs(self, prompt: str, **media: Any) -> Batch:
        raise NotImplementedError


def vision_features(model: nn.Module, batch: Batch) -> dict[Modality, Tensor]:
    """Image and video features of the Qwen-VL vision tower (Qwen2.5-VL and the Qwen2.5-Omni thinker alike)."""
    out: dict[Modality, Tensor] = {}
    for modality, pixels, grid, encode in ((Modality.IMAGE, "pixel_values", "image_grid_thw", model.get_image_features),
                                           (Modality.VIDEO, "pixel_values_videos", "video_grid_thw",
                                            model.get_video_features)):
        if batch.get(pixels) is not None:
            thw = require(batch, grid, f"gives each {modality.name.lower()}'s patch grid")
            out[modality] = torch.cat(encode(batch[pixels], thw, return_dict=True).pooler_output)
    return out


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def text_positions(attention_mask: Tensor) -> Tensor:
    """1-D positions that skip left padding ([1, batch, pos]); padded slots get 1, as HF's get_rope_index."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)[None]


def require(batch: Batch, key: str, why: str) -> Tensor:
    value = batch.get(key)
    if value is None:
        raise InputError(f"the batch lacks '{key}', which {why}")
    return value


def load_adapter_class(spec: FamilySpec) -> type[FamilyAdapter]:
    """`ADAPTER` of `hooked_av.families.<adapter>`, or of the module `<adapter>` when it is a dotted path (a
    user's own adapter outside the package)."""
    name = spec.adapter if "." in spec.adapter else f"hooked_av.families.{spec.adapter}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise ModelConfigError(f"{spec.source}: 'adapter' names {spec.adapter!r}, but module {name} cannot be "
                               f"imported ({err})") from err
    adapter = getattr(module, "ADAPTER", None)
    if not (isinstance(adapter, type) and issubclass(adapter, FamilyAdapter)):
        raise ModelConfigError(f"{spec.source}: module {name} (its 'adapter') must define ADAPTER, a "
                               "FamilyAdapter subclass")
    return adapter

