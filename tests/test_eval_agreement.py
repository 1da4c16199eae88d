"""Judge-human agreement: Spearman rho with a bootstrap CI, the ratings join, and the agreement command."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

from hooked_av.eval.agreement import agreement, spearman_ci
from hooked_av.eval.cli import add_subcommands
from hooked_av.eval.errors import EvalDataError
from hooked_av.data.jsonl import append_rows


def test_monotone_relation_has_rho_one_with_a_degenerate_interval():
    judge = np.linspace(0, 1, 30)
    rho, p, low, high = spearman_ci(judge, judge ** 3, n_boot=300)
    assert (rho, low, high) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert p < 1e-10


def test_reversed_relation_has_rho_minus_one():
    judge = np.linspace(0, 1, 30)
    rho, _, low, high = spearman_ci(judge, 1 - judge, n_boot=300)
    assert (rho, low, high) == (pytest.approx(-1.0), pytest.approx(-1.0), pytest.approx(-1.0))


def noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    human = rng.uniform(size=n)
    return np.clip(human + rng.normal(scale=0.3, size=n), 0, 1), human


def test_noisy_interval_contains_the_estimate_and_narrows_with_more_samples():
    widths = []
    for n in (40, 640):
        rho, _, low, high = spearman_ci(*noisy(n, seed=n), n_boot=500, seed=1)
        assert low < rho < high
        assert 0.5 < rho < 0.9  # noise of sd 0.3 on a uniform score: clearly positive, clearly not perfect
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): 16x the samples, about a quarter of the width


def test_bootstrap_is_seedable():
    data = noisy(50, seed=3)
    assert spearman_ci(*data, n_boot=200, seed=7) == spearman_ci(*data, n_boot=200, seed=7)
    assert spearman_ci(*data, n_boot=200, seed=7)[2:] != spearman_ci(*data, n_boot=200, seed=8)[2:]


def test_too_few_pairs_is_an_error():
    with pytest.raises(EvalDataError, match="at least 3"):
        spearman_ci([0.1, 0.2], [0.3, 0.4])


def write_human_csv(path, rows, columns=("sample_id", "modality", "human_score", "annotator")):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def judge_row(sample: str, modality: str, score: float | None, prompt: str = "p") -> dict:
    return {"sample_id": sample, "prompt": prompt, "modality": modality, "caption_model": "omni",
            "status": "ok" if score is not None else "failed", "score": score}


def test_agreement_command_joins_averages_annotators_and_reports_per_modality(tmp_path):
    human, scores, out = tmp_path / "human.csv", tmp_path / "scores.jsonl", tmp_path / "report.json"
    judge_audio = [0.1, 0.5, 0.3, 0.9, 0.7]
    rows = []
    for i, s in enumerate(judge_audio):  # two annotators whose mean is monotone in the judge score (rho 1)...
        rows += [{"sample_id": f"s{i}", "modality": "audio", "human_score": s, "annotator": "A"},
                 {"sample_id": f"s{i}", "modality": "Audio", "human_score": s / 2, "annotator": "B"}]
        rows.append({"sample_id": f"s{i}", "modality": "video", "human_score": 1 - s, "annotator": "A"})  # (-1)
    rows.append({"sample_id": "s9", "modality": "audio", "human_score": 0.5, "annotator": "A"})  # never judged
    write_human_csv(human, rows)
    append_rows(scores, [judge_row(f"s{i}", m, s) for i, s in enumerate(judge_audio) for m in ("audio", "video")])
    append_rows(scores, [judge_row("s0", "video", None)])  # a retry that failed supersedes s0's video score

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["agreement", "--human", str(human), "--scores", str(scores), "--out", str(out),
                              "--n-boot", "200"])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert report["unmatched_human"] == 1 and report["failed_judge"] == 1
    audio, video = report["modalities"]["audio"], report["modalities"]["video"]
    assert (audio["n"], audio["rho"]) == (5, pytest.approx(1.0))
    assert (video["n"], video["rho"]) == (4, pytest.approx(-1.0))


def test_ambiguous_join_and_missing_columns_are_errors(tmp_path):
    human, scores = tmp_path / "human.csv", tmp_path / "scores.jsonl"
    write_human_csv(human, [{"sample_id": "s0", "modality": "audio", "human_score": 0.5, "annotator": "A"}])
    append_rows(scores, [judge_row("s0", "audio", 0.5, prompt="hear"), judge_row("s0", "audio", 0.4, prompt="see")])
    with pytest.raises(EvalDataError, match="several judge rows match"):
        agreement(human, scores)
    write_human_csv(human, [{"sample_id": "s0", "score": 0.5}], columns=("sample_id", "score"))
    with pytest.raises(EvalDataError, match=r"lacks the columns \['modality', 'human_score'\]"):
        agreement(human, scores)
