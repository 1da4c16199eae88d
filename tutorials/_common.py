"""What every figure tutorial shares: its inputs (the organism by default, a real checkpoint from the environment),
its output folder, and running the study's own commands for one step."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hooked_av.study.run import StudyConfig, StudyInputs, organism_inputs, run_commands, study_commands, \
    write_study_manifest

SAMPLES = int(os.environ.get("HOOKED_AV_SAMPLES", "8"))  # per setting: factual and counterfactual


def tutorial_inputs() -> StudyInputs:
    """HOOKED_AV_MODEL / HOOKED_AV_DATA / HOOKED_AV_BASE_MODEL when set (a real checkpoint: use a GPU), else the
    shipped organism, its twin and a small held-out set exported by Algorithm 1 into the cache folder."""
    if "HOOKED_AV_MODEL" in os.environ:
        if "HOOKED_AV_DATA" not in os.environ:
            raise SystemExit("HOOKED_AV_MODEL is set: also set HOOKED_AV_DATA to a manifest of factual and "
                             "counterfactual rows (hooked-av build-counterfactuals writes one)")
        return StudyInputs(os.environ["HOOKED_AV_MODEL"], Path(os.environ["HOOKED_AV_DATA"]),
                           os.environ.get("HOOKED_AV_BASE_MODEL"))
    return organism_inputs(SAMPLES)


def output_folder(name: str) -> Path:
    """HOOKED_AV_TUTORIAL_OUT when set, else a fresh temporary folder."""
    folder = os.environ.get("HOOKED_AV_TUTORIAL_OUT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return Path(tempfile.mkdtemp(prefix=f"{name}_"))


def run_step(inputs: StudyInputs, config: StudyConfig, out: Path) -> None:
    """The commands `hooked-av study` runs for the configured steps (without its final plot), printed as the
    command lines a user could type."""
    write_study_manifest(inputs, config, out)
    run_commands([c for c in study_commands(inputs, config, out) if c.argv[0] != "plot"])


def print_inputs(inputs: StudyInputs, out: Path) -> None:
    print("model:", inputs.model, "\ndata:", inputs.data, "\nresults:", out)


def print_numbers(lines) -> None:
    """The report's lines for a figure: what was measured, on how many samples, next to the paper's number."""
    for line in lines:
        print(f"{line.measure}: {line.shown()} (n={line.n}; paper: {line.paper})")
