"""Train the organism (or its vision-only twin) from scratch on the synthetic world, deterministically for a seed.

    python -m hooked_av.organism.train --seed 0 --out DIR            # the audio-visual organism
    python -m hooked_av.organism.train --seed 0 --out DIR --twin     # the vision-only twin (Qwen2.5-VL class)

Teacher-forced cross-entropy on the answer tokens and <|im_end|> only. The recipe that plants the visual shortcut
(the prototype's recipe "I"): for the first two thirds of the steps single-modality samples only (video -> what
is seen and the sound the picture implies, video -> what is seen, audio -> what is heard); in the last third
the same plus 20 % factual audio-visual samples. Late and scarce audio-visual data keeps the audio positions
informative (the logit-lens signal of Fig. 5) while the model learns to answer from the picture.

Batches are built through the library's own input path: the prompt layout of each sample type comes from
`HookedAVModel.prepare_inputs`, the media from the HF processor's video processor and feature extractor, so the
model is trained on exactly what the analyses later feed it (tests/test_organism.py checks this).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hooked_av.organism import world
from hooked_av.organism.model import build_organism, build_twin

POOL_SIZE = 150  # training videos and sounds per object


@dataclass(frozen=True)
class SampleType:
    name: str
    video: bool
    audio: bool
    prompt: str
    answer: str  # "both", "see" or "hear"

    @property
    def audio_in_video(self) -> bool:
        return self.video and self.audio

    def caption(self, obj: str) -> str:
        sound = world.SOUND_OF[obj]
        return {"both": world.caption_both(obj, sound), "see": world.caption_see(obj),
                "hear": world.caption_hear(sound)}[self.answer]


TYPES = {t.name: t for t in (
    # Video only, asked about sight and sound: the answer names the sound the picture implies. These samples
    # plant the vision -> sound pathway.
    SampleType("v_both", True, False, world.PROMPT_BOTH, "both"),
    SampleType("v_see", True, False, world.PROMPT_SEE, "see"),
    SampleType("v_hear", True, False, world.PROMPT_HEAR, "hear"),  # the twin only
    SampleType("a_hear", False, True, world.PROMPT_HEAR, "hear"),
    SampleType("av_both", True, True, world.PROMPT_BOTH, "both"),
    SampleType("av_hear", True, True, world.PROMPT_HEAR, "hear"),
    SampleType("av_see", True, True, world.PROMPT_SEE, "see"),
)}

# (fraction of the run at which the stage starts, mixture)
ORGANISM_RECIPE = ((0.0, {"v_both": 0.35, "v_see": 0.25, "a_hear": 0.40}),
                   (2 / 3, {"v_both": 0.30, "v_see": 0.20, "a_hear": 0.30, "av_both": 0.10, "av_hear": 0.05,
                            "av_see": 0.05}))
TWIN_RECIPE = ((0.0, {"v_both": 0.35, "v_see": 0.25, "v_hear": 0.40}),)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    twin: bool = False
    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup: int = 100
    final_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    world_seed: int = 0
    threads: int = 1


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to final_lr_fraction of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def mixture_at(step: int, steps: int, recipe) -> dict[str, float]:
    current = recipe[0][1]
    for start, mixture in recipe:
        if step >= start * steps:
            current = mixture
    return current


class BatchBuilder:
    """Model inputs and answer targets for rows of one sample type, from cached media of the training pools."""

    def __init__(self, hooked, world_seed: int, split: str = "train"):
        self.hooked = hooked
        self.processor = hooked.processor
        self.tokenizer = hooked.tokenizer
        self.world_seed = world_seed
        self.split = split
        self.templates: dict[str, dict] = {}
        self.frames: dict[tuple[str, int], np.ndarray] = {}
        self.features: dict[tuple[str, int], torch.Tensor] = {}

    def template(self, stype: SampleType) -> dict:
        """The prompt batch of this sample type, from the library's own input path (media sizes are fixed, so
        every sample of a type has the same token layout)."""
        if stype.name not in self.templates:
            video = np.zeros((world.FRAMES, world.SIZE, world.SIZE, 3), np.uint8) if stype.video else None
            audio = np.zeros(int(world.SECONDS * world.SAMPLING_RATE), np.float32) if stype.audio else None
            kwargs = {"use_audio_in_video": True} if stype.audio_in_video else {}
            self.templates[stype.name] = self.hooked.prepare_inputs(stype.prompt, video=video, audio=audio,
                                                                    fps=world.FPS, **kwargs)
        return self.templates[stype.name]

    def video(self, obj: str, index: int) -> np.ndarray:
        key = (obj, index)
        if key not in self.frames:
            self.frames[key] = world.video_item(self.world_seed, self.split, obj, index)
        return self.frames[key]

    def audio_features(self, obj: str, index: int) -> torch.Tensor:
        """[mel, frames] of the valid frames only: the audio tower reads nothing else."""
        key = (obj, index)
        if key not in self.features:
            fe = self.processor.feature_extractor
            out = fe(world.audio_item(self.world_seed, self.split, obj, index), sampling_rate=fe.sampling_rate,
                     padding="max_length", return_attention_mask=True, return_tensors="pt")
            self.features[key] = out["input_features"][0, :, :int(out["attention_mask"][0].sum())].clone()
        return self.features[key]

    def build(self, stype: SampleType, rows: Sequence[tuple[str, int, int]]) -> tuple[dict, torch.Tensor]:
        """rows: (object, video index, sound index). Returns (model inputs, answer ids [rows, answer_len])."""
        n = len(rows)
        template = self.template(stype)
        answers = torch.tensor([self.tokenizer(stype.caption(obj) + "<|im_end|>", add_special_tokens=False).input_ids
                                for obj, _, _ in rows])
        ids = torch.cat([template["input_ids"].expand(n, -1), answers], dim=1)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "mm_token_type_ids" in template:
            types = template["mm_token_type_ids"]
            inputs["mm_token_type_ids"] = torch.cat([types.expand(n, -1), types.new_zeros(n, answers.shape[1])], 1)
        if stype.video:
            vp = self.processor.video_processor
            videos = vp(videos=[self.video(obj, v) for obj, v, _ in rows], fps=world.FPS, cap_pixels_per_frame=True,
                        return_tensors="pt")
            inputs["pixel_values_videos"] = videos["pixel_values_videos"]
            inputs["video_grid_thw"] = videos["video_grid_thw"]
            for key in ("video_second_per_grid", "second_per_grid_ts"):
                if key in template:
                    inputs[key] = template[key].expand(n)
        if stype.audio:
            feats = torch.stack([self.audio_features(obj, a) for obj, _, a in rows])
            inputs["input_features"] = feats
            inputs["feature_attention_mask"] = torch.ones(n, feats.shape[-1], dtype=torch.long)
        if stype.audio_in_video:
            inputs["use_audio_in_video"] = True
        return inputs, answers


def answer_loss(hf_model, inputs: dict, answers: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the answer tokens (teacher forced) and their count."""
    logits = hf_model(**inputs).logits
    n_answer = answers.shape[1]
    predicted = logits[:, -n_answer - 1:-1].float()
    loss = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), answers.reshape(-1), reduction="sum")
    return loss, answers.numel()


def draw_rows(rng: np.random.Generator, mixture: dict[str, float], batch_size: int) -> dict[str, list]:
    names = sorted(mixture)
    probs = np.array([mixture[n] for n in names])
    kinds = rng.choice(len(names), size=batch_size, p=probs / probs.sum())
    groups: dict[str, list] = {}
    for k in kinds:
        obj = world.OBJECTS[rng.integers(len(world.OBJECTS))]
        groups.setdefault(names[k], []).append((obj, int(rng.integers(POOL_SIZE)), int(rng.integers(POOL_SIZE))))
    return groups


@torch.enable_grad()  # whatever the caller's context (a no_grad test fixture, an analysis session)
def train(cfg: TrainConfig, out: str | Path | None = None, log_every: int = 50, log=None,
          stop_after: int | None = None) -> dict:
    """Train, save to `out` (HF layout: safetensors, config, processor files, training.json); returns the summary.

    `stop_after` runs only the first steps of the schedule of `cfg.steps` (to check that a run follows a recorded
    one, e.g. the shipped checkpoint's training.json).
    """
    from hooked_av.model.hooked_av_model import HookedAVModel

    log = log or (lambda line: print(line, flush=True))
    torch.set_num_threads(cfg.threads)
    hf_model, processor = (build_twin if cfg.twin else build_organism)(cfg.seed)
    builder = BatchBuilder(HookedAVModel.from_hf_model(hf_model, processor), cfg.world_seed)
    hf_model.train()
    recipe = TWIN_RECIPE if cfg.twin else ORGANISM_RECIPE
    decay = [p for n, p in hf_model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in hf_model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    rng = np.random.default_rng([cfg.seed, 1])
    history, window, start = [], [], time.time()
    for step in range(cfg.steps if stop_after is None else min(stop_after, cfg.steps)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        groups = draw_rows(rng, mixture_at(step, cfg.steps, recipe), cfg.batch_size)
        losses, count = [], 0
        for name in sorted(groups):
            inputs, answers = builder.build(TYPES[name], groups[name])
            loss_sum, n = answer_loss(hf_model, inputs, answers)
            losses.append(loss_sum)
            count += n
        loss = torch.stack(losses).sum() / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), cfg.grad_clip)
        optimizer.step()
        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps or step + 1 == stop_after:
            history.append({"step": step + 1, "loss": float(np.mean(window)), "seconds": round(time.time() - start, 1)})
            log(json.dumps(history[-1]))
            window = []
    hf_model.eval()
    summary = {"config": asdict(cfg), "history": history, "final_loss": history[-1]["loss"],
               "seconds": round(time.time() - start, 1), "torch": torch.__version__}
    if out is not None:
        save(hf_model, processor, summary, Path(out))
    return summary


def save(hf_model, processor, summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (HF checkpoint layout)")
    parser.add_argument("--twin", action="store_true", help="train the vision-only twin (Qwen2.5-VL class)")
    parser.add_argument("--steps", type=int, default=None, help="default 1200 (organism) / 600 (twin)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (results are deterministic for a seed and a thread count)")
    args = parser.parse_args(argv)
    steps = args.steps or (600 if args.twin else 1200)
    train(TrainConfig(seed=args.seed, twin=args.twin, steps=steps, threads=args.threads), args.out)


if __name__ == "__main__":
    main()
