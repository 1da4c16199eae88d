"""`hooked-av study`: the paper's whole study as a sequence of `hooked-av` commands, run in one process.

Each step is the command line a user could type (caption, judge, attention, logit-lens, knockout-sweep,
token-shift, plot); the study runs exactly those commands, with each checkpoint loaded once, so `report.md` can
quote the command behind every number. Every command appends rows and skips what is done, so rerunning the study
on the same folder resumes it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hooked_av.analysis.knockout import TASK_PROMPTS
from hooked_av.data.manifest import PAPER_PROMPTS
from hooked_av.model.errors import InputError
from hooked_av.plot.files import RESULT_FILES

STEPS = ("caption", "attention", "logit-lens", "knockout-sweep", "token-shift")
MANIFEST = "manifest.jsonl"  # the study's samples: the first N factual and N counterfactual rows of --data
PROMPT_BOTH, _, PROMPT_HEAR = PAPER_PROMPTS


@dataclass(frozen=True)
class StudyInputs:
    """What a study runs on: the audio-visual model, its samples and (for token shift) the base VLM."""

    model: str  # checkpoint folder (or "tiny")
    data: Path  # manifest JSONL with factual and counterfactual rows
    base_model: str | None = None


@dataclass(frozen=True)
class StudyConfig:
    steps: tuple[str, ...] = STEPS
    samples: int | None = None  # per setting (factual, counterfactual); None: every row of the manifest
    step_samples: Mapping[str, int] = field(default_factory=dict)  # fewer samples for a costly step
    judge: tuple[str, ...] = ("keywords",)  # `hooked-av judge` options: BACKEND, then e.g. --model NAME
    max_new_tokens: int = 64  # captions, knockout sweep, token shift
    attention_max_new_tokens: int = 32
    window: int = 9
    last_layers: int = 5
    fps: float = 2.0
    dtype: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in (*self.steps, *self.step_samples) if s not in STEPS]
        if unknown:
            raise InputError(f"unknown study step {unknown[0]!r}: the steps are {', '.join(STEPS)}")

    def samples_for(self, step: str) -> int | None:
        """The step's sample count per setting (never more than the study's)."""
        n = self.step_samples.get(step)
        return self.samples if n is None else n if self.samples is None else min(n, self.samples)


ORGANISM_WINDOW = 3  # the knockout window on the organism's 6 layers (the paper's 9 of 28-36 layers is ~1/4 depth)
ORGANISM_SET_SIZE = 32  # factual (and as many counterfactual) clips of the default study: it fits 5 min on 2 cores


def organism_inputs(set_size: int | None = None) -> StudyInputs:
    """The default study: the shipped model organism, its held-out synthetic set (exported once into the user's
    cache folder, factual + Algorithm 1 counterfactuals) and its vision-only twin as the base model."""
    from hooked_av.organism import shipped_organism, shipped_twin
    from hooked_av.organism.testset import default_testset_dir, export_testset

    set_size = set_size or ORGANISM_SET_SIZE
    manifest = export_testset(default_testset_dir(set_size), n=set_size)
    return StudyInputs(str(shipped_organism()), manifest, str(shipped_twin()))


@dataclass(frozen=True)
class Command:
    figures: tuple[str, ...]  # the paper figures whose numbers come from this command's rows
    argv: tuple[str, ...]  # arguments of `hooked-av`

    def __str__(self) -> str:
        return shlex.join(("hooked-av", *self.argv))


def study_commands(inputs: StudyInputs, config: StudyConfig, out: Path) -> list[Command]:
    """The commands of the configured steps, in order, then the plot command."""
    files = {name: str(out / filename) for name, filename in RESULT_FILES.items()}
    manifest = str(out / MANIFEST)
    model = ["--model", str(inputs.model), *option("--dtype", config.dtype), *option("--device", config.device)]
    fps = ["--fps", f"{config.fps:g}"]

    def analysis(step: str, name: str) -> list[str]:
        return [step, *model, "--data", manifest, "--out", files[name], *option("--samples", config.samples_for(step)),
                *fps]

    def judge(captions: str, scores: str, *modalities: str) -> list[str]:
        return ["judge", "--manifest", manifest, "--captions", files[captions], "--out", files[scores],
                "--modalities", *modalities, "--backend", *config.judge]

    commands: list[Command] = []
    for step in config.steps:
        if step == "caption":
            commands += [Command(("fig2",), ("caption", "--manifest", manifest, "--out", files["captions"], *model,
                                             "--max-new-tokens", str(config.max_new_tokens), *fps)),
                         Command(("fig2",), tuple(judge("captions", "caption_scores", "audio", "video")))]
        elif step == "attention":
            commands.append(Command(("fig4",), (*analysis(step, "attention"), "--prompt", PROMPT_BOTH,
                                                "--max-new-tokens", str(config.attention_max_new_tokens))))
        elif step == "logit-lens":
            commands += [Command(("fig5",), (*analysis(step, "logit_lens"), "--prompt", PROMPT_BOTH, "--table",
                                             "--last-layers", str(config.last_layers))),
                         Command(("fig5",), tuple(judge("logit_lens", "latent_scores", "latent_audio")))]
        elif step == "knockout-sweep":
            commands += [Command(("fig6",), (*analysis(step, "knockout"), "--window", str(config.window),
                                             "--max-new-tokens", str(config.max_new_tokens))),
                         Command(("fig6",), tuple(judge("knockout", "knockout_scores", *TASK_PROMPTS)))]
        elif step == "token-shift" and inputs.base_model is not None:
            commands.append(Command(("fig7",), (*analysis(step, "token_shift"), "--base-model",
                                                str(inputs.base_model), "--prompt", PROMPT_HEAR,
                                                "--max-new-tokens", str(config.max_new_tokens))))
    commands.append(Command(("fig2", "fig4", "fig5", "fig6", "fig7"),
                            ("plot", "--results", str(out), "--window", str(config.window))))
    return commands


def option(name: str, value) -> list[str]:
    return [] if value is None else [name, str(value)]


def write_study_manifest(inputs: StudyInputs, config: StudyConfig, out: Path) -> Path:
    """The study's samples (the first N factual and N counterfactual rows of the data) as its own manifest."""
    from hooked_av.analysis.samples import select_rows
    from hooked_av.data.manifest import check_unique_ids, read_manifest, write_manifest

    rows = select_rows(read_manifest(inputs.data), config.samples)
    check_unique_ids(rows)
    if not rows:
        raise InputError(f"{inputs.data} has no rows to study")
    return write_manifest(out / MANIFEST, rows)


def run_commands(commands: Sequence[Command], log: Callable[[str], None] = print) -> None:
    """Run each command as `hooked-av` would, in this process, each checkpoint loaded once."""
    from hooked_av.cli import build_parser
    from hooked_av.data.cli import models_kept

    parser = build_parser()
    with models_kept():
        for number, command in enumerate(commands, start=1):
            log(f"[{number}/{len(commands)}] {command}")
            args = parser.parse_args(list(command.argv))
            args.func(args)


def run_study(inputs: StudyInputs, config: StudyConfig, out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the study into `out`: result JSONL, figures, summary.json and report.md; returns the
    report's path."""
    from hooked_av.study.report import write_report

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file: give the folder the study writes into")
    out.mkdir(parents=True, exist_ok=True)
    write_study_manifest(inputs, config, out)
    commands = study_commands(inputs, config, out)
    run_commands(commands, log)
    report = write_report(inputs, config, out, commands)
    log(f"wrote {report}")
    return report
