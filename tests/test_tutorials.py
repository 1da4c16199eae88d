"""Every tutorial runs as a script on the model organism (a failing tutorial fails CI) and draws its figure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted(p for p in (ROOT / "tutorials").glob("*.py") if not p.name.startswith("_"))


def test_every_paper_figure_has_a_tutorial():
    names = {p.stem.split("_")[0] for p in TUTORIALS}
    assert {"fig2", "fig4", "fig5", "fig6", "fig7", "hooks", "adding"} <= names


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_and_draws_its_figure(tutorial: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKED_AV_")}  # the organism, not a user's model
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), MPLBACKEND="Agg", HOOKED_AV_TUTORIAL_OUT=str(tmp_path / "out"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(tutorial)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = re.findall(r"^figure: (.+\.png)$", done.stdout, flags=re.MULTILINE)
    assert len(figures) == 1, done.stdout[-2000:]
    figure = Path(figures[0])
    assert figure.parent == tmp_path / "out" and figure.stat().st_size > 1000
