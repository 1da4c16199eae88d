"""Agreement of the judge with human raters (paper Appendix B.1): Spearman rho per modality, bootstrap CI.

Human ratings are a CSV with columns sample_id, modality, human_score (0..1), and optionally prompt,
caption_model and caption_model_hash (needed when a sample was captioned with several prompts or models; the join
uses every one of these columns the CSV has) and any others (e.g. annotator, ignored). Several rows for one key (several
annotators) are averaged, as the paper compares the judge to the raters' consensus. Judge rows are the score
file of score_captions; failure records have no score and are left out of the correlation (and counted).

The confidence interval is the percentile bootstrap over (judge, human) pairs resampled together; resamples
where one side is constant (rho undefined) are dropped.
"""

from __future__ import annotations

import csv
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hooked_av.eval.errors import EvalDataError
from hooked_av.eval.judge import OK
from hooked_av.eval.scores import load_scores

REQUIRED_COLUMNS = ("sample_id", "modality", "human_score")
OPTIONAL_KEY_COLUMNS = ("prompt", "caption_model", "caption_model_hash")
MIN_PAIRS = 3


@dataclass(frozen=True)
class Agreement:
    modality: str
    n: int  # (judge, human) pairs
    rho: float
    p_value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int


@dataclass
class AgreementReport:
    modalities: dict[str, Agreement] = field(default_factory=dict)
    unmatched_human: int = 0  # human ratings with no judge score row
    failed_judge: int = 0  # human ratings whose judge row is a failure record


def spearman_ci(judge: Sequence[float], human: Sequence[float], *, n_boot: int = 2000, confidence: float = 0.95,
                seed: int | None = 0) -> tuple[float, float, float, float]:
    """(rho, p_value, ci_low, ci_high): scipy's Spearman rho and a percentile bootstrap interval."""
    from scipy.stats import ConstantInputWarning, spearmanr

    x, y = np.asarray(judge, dtype=float), np.asarray(human, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < MIN_PAIRS:
        raise EvalDataError(f"Spearman needs two equally long lists of at least {MIN_PAIRS} scores, "
                            f"got {x.shape} and {y.shape}")
    result = spearmanr(x, y)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():  # a constant resample has no rho: expected, and dropped below
        warnings.simplefilter("ignore", ConstantInputWarning)
        boot = np.array([spearmanr(x[idx], y[idx]).statistic
                         for idx in rng.integers(0, len(x), size=(n_boot, len(x)))])
    boot = boot[np.isfinite(boot)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail]) if len(boot) else (np.nan, np.nan)
    return float(result.statistic), float(result.pvalue), float(low), float(high)


def load_human_ratings(path: str | Path) -> tuple[list[str], dict[tuple[str, ...], float]]:
    """(key columns, mean human score per key) from the ratings CSV."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise EvalDataError(f"{path} lacks the columns {missing} (has {columns})")
        key_columns = ["sample_id", "modality", *[c for c in OPTIONAL_KEY_COLUMNS if c in columns]]
        ratings: dict[tuple[str, ...], list[float]] = defaultdict(list)
        for line, row in enumerate(reader, 2):
            try:
                score = float(row["human_score"])
            except (TypeError, ValueError):
                raise EvalDataError(f"{path}:{line}: human_score {row['human_score']!r} is not a number") from None
            ratings[_key(row, key_columns)].append(score)
    return key_columns, {key: float(np.mean(scores)) for key, scores in ratings.items()}


def _key(row: dict[str, Any], columns: Sequence[str]) -> tuple[str, ...]:
    values = [str(row.get(c) or "").strip() for c in columns]
    return tuple(v.lower() if c == "modality" else v for c, v in zip(columns, values))


def _index_judge_rows(rows: list[dict[str, Any]], key_columns: Sequence[str]) -> dict[tuple[str, ...], dict]:
    index: dict[tuple[str, ...], dict] = {}
    for row in rows:
        key = _key(row, key_columns)
        if key in index:
            raise EvalDataError(f"several judge rows match {dict(zip(key_columns, key))}: add the columns "
                                f"{list(OPTIONAL_KEY_COLUMNS)} to the human ratings CSV to tell them apart")
        index[key] = row
    return index


def agreement(human_csv: str | Path, scores_path: str | Path, *, n_boot: int = 2000, confidence: float = 0.95,
              seed: int | None = 0) -> AgreementReport:
    """Spearman rho (with bootstrap CI) between judge and human scores, per modality."""
    if not Path(scores_path).is_file():
        raise EvalDataError(f"score file not found: {scores_path} (written by `hooked-av judge`)")
    key_columns, human = load_human_ratings(human_csv)
    judged = _index_judge_rows(load_scores(scores_path), key_columns)
    report = AgreementReport()
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, human_score in human.items():
        row = judged.get(key)
        if row is None:
            report.unmatched_human += 1
        elif row.get("status") != OK or row.get("score") is None:
            report.failed_judge += 1
        else:
            pairs[key[1]].append((float(row["score"]), human_score))
    for modality, values in sorted(pairs.items()):
        judge_scores, human_scores = zip(*values)
        rho, p, low, high = spearman_ci(judge_scores, human_scores, n_boot=n_boot, confidence=confidence,
                                        seed=seed)
        report.modalities[modality] = Agreement(modality, len(values), rho, p, low, high, confidence, n_boot)
    return report
