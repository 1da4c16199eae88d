"""Qwen3-Omni-MoE thinker: what differs from Qwen2.5-Omni.

The decoder's differences are data (q/k norm, router + experts and the interleaved rotary layout are named in
`model_configs/qwen3_omni_moe.yaml`); the code here adds DeepStack (vision features of three encoder depths
added to the residual stream after blocks 0-2 at image / video positions, `blocks.{l}.hook_deepstack`) and the
checks that keep TMRoPE positions from being silently wrong. Processor handling, the audio tower call and HF's
own `get_rope_index` are shared with Qwen2.5-Omni.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hooked_av.model.adapter import Batch, EncoderOutput, require
from hooked_av.families.qwen2_5_omni import Qwen25OmniAdapter
from hooked_av.model.errors import InputError, UnsupportedCheckpointError
from hooked_av.model.family_spec import FamilySpec
from hooked_av.model.modality import Modality

REQUIRED_CONFIG_IDS = ("vision_start_token_id", "audio_start_token_id")
VISION_INPUTS = ((Modality.IMAGE, "pixel_values", "image_grid_thw", "get_image_features"),
                 (Modality.VIDEO, "pixel_values_videos", "video_grid_thw", "get_video_features"))


class Qwen3OmniMoeAdapter(Qwen25OmniAdapter):
    injection = "deepstack"

    def __init__(self, spec: FamilySpec, hf_model: nn.Module, processor: Any = None):
        super().__init__(spec, hf_model, processor)
        # get_rope_index reads these, but the HF config class does not declare them: without them the first
        # image or video forward fails deep inside HF.
        if missing := [a for a in REQUIRED_CONFIG_IDS if getattr(self.hf_config, a, None) is None]:
            raise UnsupportedCheckpointError(f"the Qwen3-Omni thinker config lacks {missing}: set them from the "
                                             "tokenizer (<|vision_start|>, <|audio_start|>)")
        if processor is not None:
            self._check_processor_agrees()

    def _check_processor_agrees(self) -> None:
        # HF's config class defaults are Qwen2.5-Omni's token ids and 25 position ids per second; a config built
        # from defaults runs, with wrong placeholders or wrong TMRoPE positions.
        tokenizer = self.processor.tokenizer
        for modality, token_id in self.placeholder_ids().items():
            token = getattr(self.processor, f"{modality.name.lower()}_token")
            if tokenizer.convert_tokens_to_ids(token) != token_id:
                raise UnsupportedCheckpointError(
                    f"the HF config's {modality.name.lower()} placeholder id is {token_id}, but the tokenizer "
                    f"gives {token} the id {tokenizer.convert_tokens_to_ids(token)}: set the config's token ids "
                    "from the tokenizer (the config class defaults are Qwen2.5-Omni's)")

    def injection_layers(self) -> tuple[int, ...]:
        return tuple(range(len(self.hf_config.vision_config.deepstack_visual_indexes)))

    # ---- encoders --------------------------------------------------------------------------------------
    def encode(self, batch: Batch) -> dict[Modality, Tensor]:
        return self.encode_all(batch).features

    def encode_all(self, batch: Batch) -> EncoderOutput:
        thinker = self.hf_model.model
        out = EncoderOutput({})
        for modality, pixels, grid, method in VISION_INPUTS:
            if batch.get(pixels) is None:
                continue
            thw = require(batch, grid, f"gives each {modality.name.lower()}'s patch grid")
            vision = getattr(thinker, method)(batch[pixels], thw, return_dict=True)
            out.features[modality] = torch.cat(vision.pooler_output)
            for level, per_item in enumerate(vision.deepstack_features):
                out.after_block.setdefault(level, {})[modality] = torch.cat(per_item)
        if batch.get("input_features") is not None:
            fam = require(batch, "feature_attention_mask", "marks the valid mel frames of each audio")
            out.features[Modality.AUDIO] = thinker.get_audio_features(batch["input_features"], fam,
                                                                      return_dict=True).last_hidden_state
        return out

    # ---- positions -------------------------------------------------------------------------------------
    def position_ids(self, batch: Batch) -> Tensor:
        if batch.get("pixel_values_videos") is not None:
            require(batch, "video_second_per_grid", "gives each video's seconds per temporal grid (2 / fps)")
        positions = super().position_ids(batch)
        if batch.get("use_audio_in_video"):
            self._check_interleaving_clock(batch, positions)
        return positions

    def _check_interleaving_clock(self, batch: Batch, positions: Tensor) -> None:
        """The processor interleaves audio into video by its own clock (`position_id_per_seconds`, fps), the
        model assigns positions by the config's; if they differ, video slots get audio positions and vice versa.
        Re-derive the model's order of each interleaved block (as HF's get_rope_index does) and compare it with
        the ids. Videos are counted over the batch in order, as HF counts them."""
        cfg = self.hf_config
        ids, mask = batch["input_ids"], batch["attention_mask"]
        video_idx = 0
        for row in range(ids.shape[0]):
            valid = mask[row].bool()
            tokens, pos = ids[row][valid], positions[0, row][valid]
            for i in (tokens[:-1] == cfg.vision_start_token_id).nonzero()[:, 0].tolist():
                after = int(tokens[i + 1])
                if after == cfg.audio_start_token_id:  # <|vision_start|><|audio_start|>: the block follows
                    self._check_block(tokens, i + 2, int(pos[i + 1]) + 1, batch["video_grid_thw"][video_idx],
                                      batch["video_second_per_grid"][video_idx])
                if after in (cfg.video_token_id, cfg.audio_start_token_id):
                    video_idx += 1

    def _check_block(self, tokens: Tensor, begin: int, start: int, thw: Tensor, seconds: Tensor) -> None:
        cfg = self.hf_config
        t, h, w = thw.tolist()
        # float32 as in HF, e.g. 8.67 positions per frame pair at 3 fps
        t_index = (torch.arange(t) * seconds.cpu().float() * cfg.position_id_per_seconds).float()
        video_times = t_index.repeat_interleave(h * w // cfg.vision_config.spatial_merge_size ** 2) + start
        n_audio = _count_audio(tokens, begin, cfg)
        block = tokens[begin:begin + len(video_times) + n_audio]
        if not torch.equal(block.cpu(), _merge_order(video_times.tolist(), n_audio, start, cfg)):
            raise InputError(
                "the audio interleaved into the video does not follow the model's clock "
                f"(position_id_per_seconds={cfg.position_id_per_seconds} in the HF config, {float(seconds):g} s "
                "per frame pair): the processor used another position_id_per_seconds or fps. Build the batch "
                "with model.prepare_inputs, or pass the processor the video's real fps and the config's "
                "position_id_per_seconds")

    def prepare_inputs(self, prompt: str | list[str], video: Any = None, audio: Any = None, image: Any = None, *,
                       use_audio_in_video: bool = False, fps: float = 2.0, system_prompt: str | None = None,
                       **processor_kwargs: Any) -> Batch:
        # The processor's clock must be the model's (the processor class defaults to 13, the config class to 25).
        processor_kwargs.setdefault("position_id_per_seconds", self.hf_config.position_id_per_seconds)
        return super().prepare_inputs(prompt, video, audio, image, use_audio_in_video=use_audio_in_video, fps=fps,
                                      system_prompt=system_prompt, **processor_kwargs)


def _count_audio(tokens: Tensor, begin: int, cfg: Any) -> int:
    """Audio placeholders in the interleaved block that starts at `begin` (it ends at the first other token)."""
    block = tokens[begin:]
    inside = (block == cfg.audio_token_id) | (block == cfg.video_token_id)
    length = int(inside.int().cumprod(0).sum())
    return int((block[:length] == cfg.audio_token_id).sum())


def _merge_order(video_times: list[float], n_audio: int, start: int, cfg: Any) -> Tensor:
    """Token ids of an interleaved block in HF's order: by time, a video token first on a tie. The float32
    times are exact as Python floats, so comparing them with the integer audio times matches HF's comparison."""
    out, v, a = [], 0, 0
    while v < len(video_times) and a < n_audio:
        if video_times[v] <= start + a:
            out.append(cfg.video_token_id)
            v += 1
        else:
            out.append(cfg.audio_token_id)
            a += 1
    out += [cfg.video_token_id] * (len(video_times) - v) + [cfg.audio_token_id] * (n_audio - a)
    return torch.tensor(out, dtype=torch.long)


ADAPTER = Qwen3OmniMoeAdapter
