"""The paper's figures drawn from result files (the JSONL rows the analysis commands and the judge write), for
`hooked-av plot` and `hooked-av study`. Each function reads its file, draws the PNG (and its CSV) and returns the
PNG's path; a missing or empty file is an InputError naming the command that writes it."""

from __future__ import annotations

from pathlib import Path

from hooked_av.data.jsonl import iter_rows
from hooked_av.model.errors import InputError

# The file names a study folder holds (hooked_av.study writes them; `hooked-av plot --results DIR` reads them).
RESULT_FILES = {"captions": "captions.jsonl", "caption_scores": "caption_scores.jsonl",
                "attention": "attention.jsonl", "logit_lens": "logit_lens.jsonl",
                "latent_scores": "latent_scores.jsonl", "knockout": "knockout.jsonl",
                "knockout_scores": "knockout_scores.jsonl", "token_shift": "token_shift.jsonl"}
FIGURE_FILES = {"fig2": "fig2_audio_understanding.png", "fig4": "fig4_attention.png", "fig5": "fig5_logit_lens.png",
                "fig6": "fig6_knockout.png", "fig7": "fig7_token_shift.png"}


def require_rows(path: Path, command: str) -> None:
    if not any(True for _ in iter_rows(path)):
        raise InputError(f"no result rows in {path}: `hooked-av {command}` writes them")


def figure2(caption_scores: Path, out: Path, latent_scores: Path | None = None) -> Path:
    """Fig. 2 from the caption scores (and the logit-lens word-set scores, drawn as a third panel)."""
    from hooked_av.eval.scores import load_scores
    from hooked_av.plot.fidelity import fidelity_table, plot_fidelity

    require_rows(caption_scores, "judge --captions CAPTIONS")
    rows = load_scores(caption_scores) + (load_scores(latent_scores) if latent_scores else [])
    return plot_fidelity(fidelity_table(rows), out)


def figure4(attention: Path, out: Path, prompt: str | None = None) -> Path:
    """Fig. 4: the attention rows (of one prompt, default the first row's) averaged over samples."""
    from hooked_av.analysis.attention import aggregate_attention, read_attention
    from hooked_av.plot.attention import plot_attention_by_modality

    require_rows(attention, "attention")
    prompt = prompt or next(iter_rows(attention))["prompt"]
    results = read_attention(attention, prompt)
    if not results:
        raise InputError(f"{attention} has no rows for the prompt {prompt!r}")
    return plot_attention_by_modality(aggregate_attention(results), out, title=f"Attention by modality: {prompt!r}")


def figure5(logit_lens: Path, out: Path, sample_id: str | None = None) -> Path:
    """Fig. 5: the top-1 logit-lens table of one sample (default: the first row)."""
    from hooked_av.analysis.logit_lens import lens_from_row
    from hooked_av.plot.logit_lens import plot_logit_lens

    require_rows(logit_lens, "logit-lens --table")
    row = next((r for r in iter_rows(logit_lens) if sample_id in (None, r["sample_id"])), None)
    if row is None:
        raise InputError(f"sample {sample_id!r} is not in {logit_lens}")
    return plot_logit_lens(lens_from_row(row), out,
                           title=f"Logit lens at the audio positions of {row['sample_id']}: top-1 token per layer")


def figure6(knockout_scores: Path, out: Path, window: int) -> Path:
    """Fig. 6 from the judge's scores of a knockout sweep."""
    from hooked_av.analysis.knockout import knockout_score_table
    from hooked_av.eval.scores import load_scores
    from hooked_av.plot.knockout import plot_knockout_curves

    require_rows(knockout_scores, "judge --captions SWEEP")
    return plot_knockout_curves(knockout_score_table(load_scores(knockout_scores)), out, window=window)


def shift_summaries(token_shift: Path) -> dict[str, dict]:
    """All response tokens and the sound-event tokens (the selector's), pooled over the samples of the file."""
    from hooked_av.analysis.token_shift import aggregate_shift, read_token_shift

    results = read_token_shift(token_shift)
    return {"all tokens": aggregate_shift(results), "sound-event tokens": aggregate_shift(results, selected_only=True)}


def figure7(token_shift: Path, out: Path) -> Path:
    from hooked_av.plot.token_shift import plot_token_shift

    require_rows(token_shift, "token-shift")
    return plot_token_shift(shift_summaries(token_shift), out, title="Token shift against the base model")
