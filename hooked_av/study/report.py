"""The study's headline numbers, computed from its result rows, next to the paper's, as summary.json and
report.md (each figure's numbers with the commands that produced them)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hooked_av.analysis.knockout import TASK_PROMPTS
from hooked_av.data.manifest import PAPER_PROMPTS
from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES
from hooked_av.study.run import Command, StudyConfig, StudyInputs

PROMPT_BOTH, PROMPT_SEE, PROMPT_HEAR = PAPER_PROMPTS
FIGURE_TITLES = {"fig2": "Fig. 2: audio understanding, factual vs counterfactual",
                 "fig4": "Fig. 4: attention of generated tokens by modality",
                 "fig5": "Fig. 5: logit lens at the audio positions (latent audio understanding)",
                 "fig6": "Fig. 6: attention knockout",
                 "fig7": "Fig. 7: token shift against the base VLM"}
# The paper's layer ranges are of Qwen2.5-Omni 3B's 36 layers; other depths take the same fractions.
PAPER_LAYERS = 36
EARLY = (0, 6)  # layers 0-5: "audio receives 40-50% of the attention"
DEEP = (15, 31)  # layers 15-30: "video attention reaches 20-40%"


@dataclass
class Headline:
    measure: str
    value: float | None  # a fraction (shown in percent) or a plain number; None: not measured
    paper: str
    n: int  # samples (or tokens, for token shift) behind the value
    percent: bool = True

    def shown(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "—"
        return f"{100 * self.value:.1f}%" if self.percent else f"{self.value:.3f}"


# ---- reading the result files -----------------------------------------------------------------------------------
def scores(path: Path) -> list[dict[str, Any]]:
    from hooked_av.eval.scores import load_scores

    return [r for r in load_scores(path) if r.get("score") is not None] if path.is_file() else []


def mean_of(rows: Iterable[dict[str, Any]], **where: Any) -> tuple[float | None, int]:
    """Mean score of the rows matching every field of `where` (counterfactual compared as a bool), and their count."""
    values = [r["score"] for r in rows
              if all((bool(r.get(k)) if k == "counterfactual" else r.get(k)) == v for k, v in where.items())]
    return (float(np.mean(values)) if values else None), len(values)


def fig2(out: Path) -> list[Headline]:
    rows = [r for r in scores(out / RESULT_FILES["caption_scores"]) if "source" not in r]
    lines = []
    for prompt in (PROMPT_HEAR, PROMPT_BOTH):
        factual, n_f = mean_of(rows, modality="audio", prompt=prompt, counterfactual=False)
        cf, n_cf = mean_of(rows, modality="audio", prompt=prompt, counterfactual=True)
        drop = 1 - cf / factual if factual and cf is not None else None
        lines += [Headline(f"audio fidelity, factual, {prompt!r}", factual, "60% (Qwen2.5-Omni, Sec. 6)", n_f),
                  Headline(f"audio fidelity, counterfactual, {prompt!r}", cf, "23% (Qwen2.5-Omni, Sec. 6)", n_cf),
                  Headline(f"relative drop of audio fidelity, {prompt!r}", drop, "up to 56% (Fig. 2)",
                           min(n_f, n_cf))]
    video, n = mean_of(rows, modality="video", prompt=PROMPT_SEE, counterfactual=True)
    lines.append(Headline(f"video fidelity, counterfactual, {PROMPT_SEE!r}", video, "not stated", n))
    return lines


def layer_range(n_layers: int, paper_range: tuple[int, int]) -> range:
    start, stop = (round(bound * n_layers / PAPER_LAYERS) for bound in paper_range)
    return range(min(start, n_layers - 1), max(stop, start + 1, 1))


def fig4(out: Path) -> list[Headline]:
    from hooked_av.analysis.attention import aggregate_attention, read_attention

    path = out / RESULT_FILES["attention"]
    results = read_attention(path, PROMPT_BOTH) if path.is_file() else []
    if not results:
        return []
    agg = aggregate_attention(results)
    n_layers = len(agg.layers)
    early, deep = layer_range(n_layers, EARLY), layer_range(n_layers, DEEP)
    after_early = range(early.stop, n_layers)

    def share(group: str, layers: range) -> float | None:
        if group not in agg.groups or not len(layers):
            return None
        return float(agg.mean[list(layers), agg.groups.index(group)].mean())

    def span(layers: range) -> str:
        return f"layers {layers.start}-{layers.stop - 1}" if len(layers) else "no layers"

    return [Headline(f"audio share, {span(early)} (paper: 0-5 of 36)", share("audio", early), "40-50%", agg.n_samples),
            Headline(f"audio share, {span(after_early)}", share("audio", after_early), "near zero", agg.n_samples),
            Headline(f"video share, {span(deep)} (paper: 15-30 of 36)", share("video", deep), "20-40%",
                     agg.n_samples),
            Headline("prompt-text share, all layers", share("text", range(n_layers)), "60-100% (query tokens)",
                     agg.n_samples)]


def fig5(out: Path) -> list[Headline]:
    latent = scores(out / RESULT_FILES["latent_scores"])
    captions = [r for r in scores(out / RESULT_FILES["caption_scores"]) if "source" not in r]
    lines = []
    for setting, cf in (("counterfactual", True), ("factual", False)):
        value, n = mean_of(latent, modality="latent_audio", counterfactual=cf)
        lines.append(Headline(f"latent audio understanding (logit-lens words), {setting}", value,
                              "61.4%" if cf else "not stated", n))
    value, n = mean_of(captions, modality="audio", prompt=PROMPT_BOTH, counterfactual=True)
    lines.append(Headline(f"audio fidelity of the caption, counterfactual, {PROMPT_BOTH!r}", value, "23%", n))
    return lines


def fig6(out: Path) -> list[Headline]:
    from hooked_av.analysis.knockout import knockout_score_table

    rows = scores(out / RESULT_FILES["knockout_scores"])
    if not rows:
        return []
    table = knockout_score_table(rows)
    lines = []
    # per panel (setting, task): the knockouts the paper describes, the window picked, what the paper saw
    panels = {("counterfactual", "audio"): (("video", max, "rises: recovers ≈50% relative in the final layers"),
                                            ("audio", min, "falls: loses up to ≈50% relative in the final layers")),
              ("counterfactual", "video"): (("video", min, "falls ≈40% in the final layers"),),
              ("factual", "audio"): (("video", min, "falls ≈10%"), ("audio", min, "falls only ≈10%")),
              ("factual", "video"): (("video", min, "falls ≈10% from the middle layers (L15)"),)}
    for (setting, task), cases in panels.items():
        part = table[(table.setting == setting) & (table.task == task)]
        base = part[part.source == "none"]
        lines.append(Headline(f"{setting} {task} fidelity, no knockout ({TASK_PROMPTS[task]!r})",
                              float(base.score.mean()) if len(base) else None, "—", base.sample_id.nunique()))
        for source, pick, paper in cases:
            blocked = part[part.source == source]
            curve = blocked.groupby("centre_layer").score.mean()
            if len(curve):
                centre = int(curve.idxmax() if pick is max else curve.idxmin())
                lines.append(Headline(f"{setting} {task} fidelity, G↛{source[0].upper()}, "
                                      f"{'best' if pick is max else 'worst'} window (centre layer {centre})",
                                      float(curve[centre]), paper, blocked.sample_id.nunique()))
    return lines


def fig7(out: Path) -> list[Headline]:
    from hooked_av.plot.files import shift_summaries

    path = out / RESULT_FILES["token_shift"]
    if not path.is_file():
        return []
    summary = shift_summaries(path)
    everything, sound = summary["all tokens"], summary["sound-event tokens"]
    lines = [Headline("mean KL(base ‖ AV), all response tokens", everything.get("kl_base_av"),
                      "0.4 (direction not stated)", everything["n_tokens"], percent=False),
             Headline("mean KL(AV ‖ base), all response tokens", everything.get("kl_av_base"),
                      "0.4 (direction not stated)", everything["n_tokens"], percent=False),
             Headline("sound-event tokens: median base rank", sound.get("median_base_rank"), "1", sound["n_tokens"],
                      percent=False)]
    for bucket, paper in (("unshifted", "66.06%"), ("marginal", "19.30%"), ("shifted", "14.63%")):
        lines.append(Headline(f"sound-event tokens: {bucket}", sound.get(bucket), paper, sound["n_tokens"]))
    return lines


HEADLINES = {"fig2": fig2, "fig4": fig4, "fig5": fig5, "fig6": fig6, "fig7": fig7}


# ---- writing ----------------------------------------------------------------------------------------------------
def headlines(out: Path) -> dict[str, list[Headline]]:
    return {figure: compute(out) for figure, compute in HEADLINES.items()}


def write_report(inputs: StudyInputs, config: StudyConfig, out: Path, commands: Sequence[Command]) -> Path:
    """summary.json (the numbers) and report.md (the numbers next to the paper's, the figures, the commands)."""
    numbers = headlines(out)
    summary = {"inputs": {k: str(v) if v is not None else None for k, v in asdict(inputs).items()},
               "config": {**asdict(config), "step_samples": dict(config.step_samples)},
               "figures": {figure: [asdict(h) for h in lines] for figure, lines in numbers.items()},
               "commands": [str(c) for c in commands]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = [f"# hooked-av study of `{inputs.model}`", "",
            f"Samples: `{inputs.data}` ("
            + (f"the first {config.samples} factual and the first {config.samples} counterfactual rows"
               if config.samples else "every row")
            + f", in `{out / 'manifest.jsonl'}`); judge: `{' '.join(config.judge)}`"
            + (" (the deterministic keyword scorer, not the paper's LLM judge)" if config.judge[0] == "keywords"
               else "") + ". Paper: Qwen2.5-Omni 3B with a Qwen3-32B judge. Percentages are mean scores (or "
            "shares) over the samples; n counts samples (tokens for Fig. 7).", ""]
    for figure, lines in numbers.items():
        text += [f"## {FIGURE_TITLES[figure]}", ""]
        figure_path = out / FIGURE_FILES[figure]
        if figure_path.is_file():
            text += [f"![{FIGURE_TITLES[figure]}]({figure_path.name})", ""]
        if not lines:
            text += ["Not measured: " + ("no `--base-model` given." if figure == "fig7" and not inputs.base_model
                                         else "its step was not run."), ""]
            continue
        text += ["| measure | this run | paper | n |", "|---|---:|---|---:|"]
        text += [f"| {h.measure} | {h.shown()} | {h.paper} | {h.n} |" for h in lines]
        text += ["", "Produced by:", "", "```bash"]
        text += [str(c) for c in commands if figure in c.figures]
        text += ["```", ""]
    report = out / "report.md"
    report.write_text("\n".join(text), encoding="utf-8")
    return report
