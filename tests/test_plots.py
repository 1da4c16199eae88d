"""Each paper figure is drawn from the analysis results as a PNG a reader can follow without the code, with the
table it drew written next to it as CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text
from PIL import Image

from hooked_av.analysis.attention import aggregate_attention, attention_by_modality
from hooked_av.analysis.logit_lens import logit_lens
from hooked_av.analysis.token_shift import aggregate_shift, token_shift
from hooked_av.plot import plot_attention_by_modality, plot_knockout_curves, plot_logit_lens, plot_token_shift


def assert_png(path, min_width=300):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_width
        assert len(set(im.convert("L").getdata())) > 10  # something was drawn


@pytest.fixture
def drawn(monkeypatch):
    """The figure objects, kept when the plot functions save them (to check their text and layout)."""
    import hooked_av.plot.attention
    import hooked_av.plot.knockout
    import hooked_av.plot.logit_lens
    import hooked_av.plot.token_shift

    figures = {}
    for module in (hooked_av.plot.attention, hooked_av.plot.knockout, hooked_av.plot.logit_lens,
                   hooked_av.plot.token_shift):
        def capture(fig, path, table, real=module.save):
            figures[Path(path).name] = fig
            return real(fig, path, table)

        monkeypatch.setattr(module, "save", capture)
    return figures


def texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def assert_legends_cover_no_axes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the saved figure was closed: lay it out again
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend covers an axes"


def test_attention_figure(omni, omni_batches, tmp_path, drawn):
    _, _, model = omni
    results = [attention_by_modality(model, omni_batches[c], max_new_tokens=3, stop_token_ids=[])
               for c in ("audio+video", "video")]
    assert_png(plot_attention_by_modality(results[0], tmp_path / "fig4_one.png"))
    assert "1 sample" in texts(drawn["fig4_one.png"])
    agg = aggregate_attention(results)
    assert_png(plot_attention_by_modality(agg, tmp_path / "fig4.png", groups=("video", "audio", "text")))
    fig = drawn["fig4.png"]
    assert "n = 2 samples" in texts(fig) and "95% CI" in texts(fig)
    assert_legends_cover_no_axes(fig)
    table = pd.read_csv(tmp_path / "fig4.csv")
    assert list(table.columns) == ["layer", "group", "mean", "ci_low", "ci_high", "n_samples"]
    assert len(table) == model.cfg.n_layers * 3
    video = table[table.group == "video"].sort_values("layer")
    assert np.allclose(video["mean"], agg.mean[:, agg.groups.index("video")])
    frame = agg.to_frame()
    assert len(frame) == model.cfg.n_layers * len(agg.groups)
    audio_1 = frame[(frame.layer == 1) & (frame.group == "audio")].iloc[0]
    gi = agg.groups.index("audio")
    assert (audio_1["mean"], audio_1.ci_low, audio_1.ci_high) == (agg.mean[1, gi], agg.ci_low[1, gi], agg.ci_high[1, gi])


def test_logit_lens_figure_over_many_positions(omni, media, tmp_path, drawn):
    _, _, model = omni
    batch = model.prepare_inputs("Describe.", audio=np.tile(media["audio"], 2))  # 8 s: 200 audio positions
    lens = logit_lens(model, batch, top_k=1)
    n = len(lens.positions)
    assert n == 200
    assert_png(plot_logit_lens(lens, tmp_path / "fig5.png", max_positions=64), min_width=1000)
    fig = drawn["fig5.png"]
    assert f"showing 64 of {n} positions" in texts(fig)
    assert any(ax.get_ylabel() == "top-1 probability" for ax in fig.axes)  # the colour bar
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert sum("<|AUDIO|>" in t for t in ticks) == 64  # each position is labelled with its input token
    table = pd.read_csv(tmp_path / "fig5.csv", keep_default_na=False)
    assert list(table.columns) == ["layer", "position", "input_token", "token", "prob"]
    assert len(table) == 64 * model.cfg.n_layers and table.position.nunique() == 64
    assert set(table.input_token) == {"<|AUDIO|>"}
    positions = lens.positions.tolist()
    row = table.iloc[-1]
    li, pi = lens.layers.index(row.layer), positions.index(row.position)
    assert abs(row.prob - float(lens.top_probs[li, pi, 0])) < 1e-6
    # few positions: all drawn, nothing said to be cut
    small = logit_lens(model, batch, positions=[3, 4, 5], top_k=1)
    plot_logit_lens(small, tmp_path / "fig5_small.png")
    assert "showing" not in texts(drawn["fig5_small.png"])


def knockout_table(n_samples=5, seed=0):
    rng = np.random.default_rng(seed)
    rows = [dict(sample_id=f"s{i}", setting=s, task=t, source=src, centre_layer=c,
                 score=float(np.clip(0.5 + 0.03 * c * (src == "video") + rng.normal(0, 0.1), 0, 1)))
            for i in range(n_samples) for s in ("factual", "counterfactual") for t in ("video", "audio")
            for src in ("audio", "video") for c in range(8)]
    rows += [dict(sample_id=f"s{i}", setting=s, task=t, source="none", centre_layer=None, score=0.6)
             for i in range(n_samples) for s in ("factual", "counterfactual") for t in ("video", "audio")]
    return pd.DataFrame(rows)


def test_knockout_figure(tmp_path, drawn):
    scores = knockout_table()
    assert_png(plot_knockout_curves(scores, tmp_path / "fig6.png", window=9), min_width=1000)
    fig = drawn["fig6.png"]
    assert "window of 9 layers" in texts(fig) and "n = 5 samples" in texts(fig)
    assert sum(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers) == 8  # 2 per panel
    assert_legends_cover_no_axes(fig)
    table = pd.read_csv(tmp_path / "fig6.csv")
    assert list(table.columns) == ["setting", "task", "source", "centre_layer", "mean", "ci_low", "ci_high",
                                   "n_samples"]
    one = scores[(scores.setting == "factual") & (scores.task == "audio") & (scores.source == "video")
                 & (scores.centre_layer == 3)].score
    drawn_row = table[(table.setting == "factual") & (table.task == "audio") & (table.source == "video")
                      & (table.centre_layer == 3)].iloc[0]
    half = 1.959964 * one.std(ddof=1) / np.sqrt(len(one))  # normal 97.5% quantile
    assert np.isclose(drawn_row["mean"], one.mean()) and np.isclose(drawn_row.ci_high - drawn_row["mean"], half)
    assert drawn_row.n_samples == 5


def test_token_shift_figure_notes_empty_groups(omni, media, tmp_path, drawn):
    _, processor, model = omni
    result = token_shift(model, model, video=media["video"], audio=media["audio"],
                         response=processor.tokenizer.encode("a dog barks"))
    quiet = token_shift(model, model, video=media["video"], audio=media["audio"],
                        response=processor.tokenizer.encode("grey sky"))
    summaries = {"all tokens": result.summary(), "sound events": result.summary(selected_only=True),
                 "nothing": aggregate_shift([quiet], selected_only=True)}  # no sound-event word: no tokens
    assert_png(plot_token_shift(summaries, tmp_path / "fig7.png"))
    fig = drawn["fig7.png"]
    assert "no tokens" in texts(fig)
    assert f"n = {result.response_ids.numel()} tokens" in texts(fig)
    assert_legends_cover_no_axes(fig)
    table = pd.read_csv(tmp_path / "fig7.csv")
    assert list(table.group) == ["all tokens", "sound events", "nothing"]
    assert table.n_tokens.tolist() == [result.response_ids.numel(), int(result.selected.sum()), 0]
    assert np.isclose(table.kl_av_base[0], float(result.kl_av_base.mean()))
    frame = aggregate_shift([result]).to_frame()
    assert frame.n_tokens.tolist() == [result.response_ids.numel()]
