"""`hooked-av plot`: the paper's figures from result files (a study folder, or files named one by one)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hooked_av.data.cli import positive


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="draw the paper's figures (PNG + CSV) from result files",
                              description="Draw Fig. 2, 4, 5, 6, 7 from the rows the analysis commands and the judge "
                                          "wrote: every figure whose input is given (or, with --results, present in "
                                          "a study folder).")
    p.add_argument("--results", type=Path, help="a `hooked-av study` folder: its result files by their names")
    p.add_argument("--out", type=Path, help="folder for the figures (default: --results)")
    p.add_argument("--caption-scores", type=Path, help="Fig. 2: judge scores of `hooked-av caption` rows")
    p.add_argument("--latent-scores", type=Path, help="Fig. 2: judge scores (latent_audio) of logit-lens rows")
    p.add_argument("--attention", type=Path, help="Fig. 4: rows of `hooked-av attention`")
    p.add_argument("--logit-lens", type=Path, help="Fig. 5: rows of `hooked-av logit-lens --table`")
    p.add_argument("--sample", help="Fig. 5: the sample to draw (default: the file's first)")
    p.add_argument("--knockout-scores", type=Path, help="Fig. 6: judge scores of `hooked-av knockout-sweep` rows")
    p.add_argument("--window", type=positive(int), default=9, help="Fig. 6: the sweep's window (default: 9)")
    p.add_argument("--token-shift", type=Path, help="Fig. 7: rows of `hooked-av token-shift`")
    p.set_defaults(func=plot_cmd)


def plot_cmd(args: argparse.Namespace) -> int:
    from hooked_av.model.errors import InputError
    from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES, figure2, figure4, figure5, figure6, figure7

    out = args.out or args.results
    if out is None:
        raise InputError("plot needs --out (the folder for the figures) or --results (a study folder)")
    given = {name: getattr(args, name) for name in ("caption_scores", "latent_scores", "attention", "logit_lens",
                                                    "knockout_scores", "token_shift")}
    if args.results:  # a study folder's files fill in what was not named
        given = {name: path or existing(args.results / RESULT_FILES[name]) for name, path in given.items()}
    drawn = []
    if given["caption_scores"]:
        drawn.append(figure2(given["caption_scores"], out / FIGURE_FILES["fig2"], given["latent_scores"]))
    if given["attention"]:
        drawn.append(figure4(given["attention"], out / FIGURE_FILES["fig4"]))
    if given["logit_lens"]:
        drawn.append(figure5(given["logit_lens"], out / FIGURE_FILES["fig5"], args.sample))
    if given["knockout_scores"]:
        drawn.append(figure6(given["knockout_scores"], out / FIGURE_FILES["fig6"], args.window))
    if given["token_shift"]:
        drawn.append(figure7(given["token_shift"], out / FIGURE_FILES["fig7"]))
    if not drawn:
        raise InputError("no result file to plot: name one (--attention FILE, ...) or a study folder (--results DIR)")
    for path in drawn:
        print(f"wrote {path} and {path.with_suffix('.csv').name}")
    return 0


def existing(path: Path) -> Path | None:
    return path if path.is_file() else None
