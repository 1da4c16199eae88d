"""Sharded hooked runs: disjoint deterministic shares, one JSONL per rank, merged by key; torchrun with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hooked_av import InputError
from hooked_av.data.jsonl import append_rows, iter_rows
from hooked_av.data.manifest import ManifestRow, write_manifest
from hooked_av.data.shard import Shard, merge_jsonl, merge_shards, run_sharded
from tests.test_media import write_clip

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "shard_worker.py"
OUTPUTS = ("sweep.jsonl", "sweep.jsonl.errors.jsonl", "words.jsonl", "words.jsonl.errors.jsonl", "attention.jsonl",
           "attention.jsonl.errors.jsonl", "shift.jsonl", "shift.jsonl.errors.jsonl")


def test_shares_are_disjoint_cover_every_row_and_do_not_depend_on_the_launch():
    rows = list(range(11))
    shares = [Shard(r, 3).rows(rows) for r in range(3)]
    assert sorted(sum(shares, [])) == rows and shares[1] == [1, 4, 7, 10]
    assert [Shard(r, 3).rows(rows) for r in range(3)] == shares
    assert Shard().rows(rows) == rows
    with pytest.raises(InputError, match="rank 2 of world size 2"):
        Shard(2, 2)


def test_rank_files_sit_beside_the_output_and_a_single_process_writes_the_output(tmp_path):
    out = tmp_path / "sweep.jsonl"
    assert Shard(1, 4).path(out) == tmp_path / "sweep.rank1-of-4.jsonl"
    assert Shard().path(out) == out
    calls = []
    rows = [ManifestRow(f"s{i}", tmp_path / "v.mp4") for i in range(3)]
    assert run_sharded(lambda rows, path: calls.append(([r.sample_id for r in rows], path)), rows, out) == out
    assert calls == [(["s0", "s1", "s2"], out)]
    with pytest.raises(InputError, match="sample_id 's0' is used by 2 samples"):
        run_sharded(lambda rows, path: None, rows + rows[:1], out)


def test_merge_keeps_each_key_once_in_manifest_order_and_the_rows_already_merged(tmp_path):
    out = tmp_path / "words.jsonl"
    append_rows(out, [{"sample_id": "b", "prompt": "p", "v": 1}])  # merged by an earlier launch
    append_rows(tmp_path / "words.rank0-of-2.jsonl", [{"sample_id": "c", "prompt": "p", "v": 2},
                                                      {"sample_id": "a", "prompt": "p", "v": 3}])
    append_rows(tmp_path / "words.rank1-of-2.jsonl", [{"sample_id": "b", "prompt": "p", "v": 9},
                                                      {"sample_id": "z", "prompt": "p", "v": 4}])
    append_rows(tmp_path / "words.rank1-of-2.jsonl.errors.jsonl", [{"sample_id": "d", "error": "E"}] * 2)
    by_prompt = lambda row: (row["sample_id"], row["prompt"])  # noqa: E731
    merge_shards(out, 2, by_prompt, order=["a", "b", "c", "d"])
    assert [(r["sample_id"], r["v"]) for r in iter_rows(out)] == [("a", 3), ("b", 1), ("c", 2), ("z", 4)]
    assert list(iter_rows(tmp_path / "words.jsonl.errors.jsonl")) == [{"sample_id": "d", "error": "E"}]
    assert merge_jsonl([], out, by_prompt) == 4  # idempotent
    assert not list(tmp_path.glob("*.merging"))


def launch(manifest: Path, out: Path, *extra: str) -> subprocess.Popen:
    """The worker under torchrun, 2 processes on this machine (gloo); its output is kept for the asserts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
               str(manifest), str(out), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output[-3000:]


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every rank: the same kernels, so the same floats
    yield
    torch.set_num_threads(threads)


def test_two_ranks_killed_and_restarted_merge_to_the_single_process_run(omni, tmp_path, one_thread):
    from tests.shard_worker import run_study

    for i in range(3):
        write_clip(tmp_path / f"c{i}.mp4", seconds=1.0)
    rows = [ManifestRow(f"s{i}", tmp_path / f"c{i}.mp4", "video", ["a tone"]) for i in range(3)]
    rows.append(ManifestRow("broken", tmp_path / "no.mp4", "video", ["a tone"]))
    manifest = write_manifest(tmp_path / "manifest.jsonl", rows)
    # rank 0: s0, s2; rank 1: s1, broken. Rank 1 is SIGKILLed after the sweep's rows of s1's first prompt.
    killed = launch(manifest, tmp_path / "ranks", "--die-after", "1")
    run_study(omni[2], rows, tmp_path / "single")  # the reference: one process, the default path (same weights)
    code, output = finish(killed)
    assert code != 0, output
    rank1 = tmp_path / "ranks" / "sweep.rank1-of-2.jsonl"
    finished = rank1.read_text()
    assert finished and {r["prompt"] for r in iter_rows(rank1)} == {"Describe what you see."}
    assert not (tmp_path / "ranks" / "sweep.jsonl").exists()  # no merge before every rank is done

    code, output = finish(launch(manifest, tmp_path / "ranks"))
    assert code == 0, output
    assert rank1.read_text().startswith(finished)  # resumed after its finished rows, none recomputed
    for name in OUTPUTS:
        single = [json.loads(line) for line in (tmp_path / "single" / name).read_text().splitlines()]
        merged = [json.loads(line) for line in (tmp_path / "ranks" / name).read_text().splitlines()]
        assert merged == single, name
    assert len(list(iter_rows(tmp_path / "single" / "sweep.jsonl"))) == 3 * 2 * (1 + 2 * 2)


def test_the_study_script_in_the_docs_imports_what_exists():
    import ast
    import importlib
    import re

    script = re.search(r"```python\n(# study.py.*?)```", (ROOT / "docs/scaling.md").read_text(), flags=re.S).group(1)
    imports = [node for node in ast.parse(script).body if isinstance(node, ast.ImportFrom)]
    assert len(imports) == 8
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
