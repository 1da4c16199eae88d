"""Each paper figure is drawn from the analysis results as a PNG."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from hooked_av.analysis.attention import aggregate_attention, attention_by_modality
from hooked_av.analysis.logit_lens import logit_lens
from hooked_av.analysis.token_shift import token_shift
from hooked_av.plot import plot_attention_by_modality, plot_knockout_curves, plot_logit_lens, plot_token_shift


def assert_png(path, min_width=300):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_width
        assert len(set(im.convert("L").getdata())) > 10  # something was drawn


def test_attention_figure(omni, omni_batches, tmp_path):
    _, _, model = omni
    results = [attention_by_modality(model, omni_batches[c], max_new_tokens=3, stop_token_ids=[])
               for c in ("audio+video", "video")]
    assert_png(plot_attention_by_modality(results[0], tmp_path / "fig4_one.png"))
    assert_png(plot_attention_by_modality(aggregate_attention(results), tmp_path / "fig4.png"))


def test_logit_lens_figure(omni, omni_batches, tmp_path):
    _, _, model = omni
    assert_png(plot_logit_lens(logit_lens(model, omni_batches["audio"], top_k=1), tmp_path / "fig5.png"))


def test_knockout_figure(tmp_path):
    rows = [dict(setting=s, task=t, source=src, centre_layer=c, score=0.5 + 0.01 * c * (src == "video"))
            for s in ("factual", "counterfactual") for t in ("video", "audio") for src in ("audio", "video")
            for c in range(8)]
    rows += [dict(setting=s, task=t, source="none", centre_layer=None, score=0.6)
             for s in ("factual", "counterfactual") for t in ("video", "audio")]
    assert_png(plot_knockout_curves(pd.DataFrame(rows), tmp_path / "fig6.png"), min_width=1000)


def test_token_shift_figure(omni, media, tmp_path):
    _, processor, model = omni
    result = token_shift(model, model, video=media["video"], audio=media["audio"],
                         response=processor.tokenizer.encode("a dog barks"))
    summaries = {"all tokens": result.summary(), "sound events": result.summary(selected_only=True)}
    assert_png(plot_token_shift(summaries, tmp_path / "fig7.png"))
