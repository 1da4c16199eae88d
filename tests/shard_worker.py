"""Every hooked step of the study through `run_sharded`, on a tiny model: the worker of tests/test_shard.py.

    python tests/shard_worker.py MANIFEST OUT_DIR                                   # one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/shard_worker.py MANIFEST OUT_DIR
    ... --die-after 1        # rank 1 kills itself (SIGKILL) right after its first finished knockout-sweep row set
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout under test, when run as a script

from hooked_av import HookedAVModel  # noqa: E402
from hooked_av.analysis import knockout  # noqa: E402
from hooked_av.analysis.attention import attention_run  # noqa: E402
from hooked_av.analysis.logit_lens import latent_words_run  # noqa: E402
from hooked_av.analysis.token_shift import token_shift_run  # noqa: E402
from hooked_av.data.manifest import read_manifest  # noqa: E402
from hooked_av.data.shard import Shard, run_sharded  # noqa: E402
from hooked_av.testing.tiny import tiny_omni_thinker  # noqa: E402

PROMPTS = ("Describe what you see.", "Describe what you hear.")


def die_after(n: int) -> None:
    """Make this process SIGKILL itself once it has appended `n` row sets to the sweep file (not a side file)."""
    append, written = knockout.append_rows, []

    def append_then_die(path, rows):
        append(path, rows)
        if not Path(path).name.endswith((".skipped.jsonl", ".errors.jsonl")):
            written.append(path)
            if len(written) == n:
                os.kill(os.getpid(), signal.SIGKILL)

    knockout.append_rows = append_then_die


def run_study(model: HookedAVModel, rows: list, out: Path) -> None:
    """The four hooked steps, each through run_sharded with the key of its rows."""
    by_prompt = lambda row: (row["sample_id"], row["prompt"])  # noqa: E731
    with torch.no_grad():
        run_sharded(partial(knockout.knockout_sweep, model, prompts=PROMPTS, window=1, max_new_tokens=2), rows,
                    out / "sweep.jsonl", key=knockout.sweep_key)
        run_sharded(partial(latent_words_run, model, last_layers=2), rows, out / "words.jsonl", key=by_prompt)
        run_sharded(partial(attention_run, model, max_new_tokens=2), rows, out / "attention.jsonl", key=by_prompt)
        run_sharded(partial(token_shift_run, model, model, base_gets_audio=True, max_new_tokens=2), rows,
                    out / "shift.jsonl", key=lambda row: (row["sample_id"], row["instruction"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("out")
    parser.add_argument("--die-after", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as torchrun's default and the test's reference: every process computes alike
    shard = Shard.from_env()
    if args.die_after and shard.rank == 1:
        die_after(args.die_after)
    hf_model, processor = tiny_omni_thinker()
    model = HookedAVModel.from_hf_model(hf_model.to(shard.device()), processor)
    run_study(model, read_manifest(args.manifest), Path(args.out))


if __name__ == "__main__":
    main()
