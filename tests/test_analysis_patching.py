"""Activation patching on multimodal batches: a corrupted run patched with a clean one, positions x layers."""

from __future__ import annotations

import pytest

from hooked_av import InputError, UnknownHookError
from hooked_av.analysis.patching import activation_patch
from tests.conftest import PROMPT


@pytest.fixture(scope="module")
def model():
    """A tiny model whose output depends on the audio (see test_analysis_knockout.audio_sensitive_model)."""
    from tests.test_analysis_knockout import audio_sensitive_model

    return audio_sensitive_model()


@pytest.fixture(scope="module")
def pair(model, media):
    """Clean and corrupted runs with different sounds of the same length (aligned positions): audio only."""
    clean = model.prepare_inputs(PROMPT, audio=media["audio2"])
    corrupted = model.prepare_inputs(PROMPT, audio=media["audio2"][::-1].copy() * 3)
    return clean, corrupted


@pytest.fixture(scope="module")
def av_pair(model, media):
    """The same with a video as well."""
    clean = model.prepare_inputs(PROMPT, video=media["video2"], audio=media["audio2"])
    corrupted = model.prepare_inputs(PROMPT, video=media["video2"], audio=media["audio2"][::-1].copy() * 3)
    return clean, corrupted


def distance_to(clean_logits):
    """The metric: how far the last position's logits are from the clean run's (0 = clean behaviour)."""
    return lambda logits: (logits[0, -1] - clean_logits[0, -1]).norm()


def reference(model, corrupted, clean_cache, layer, positions, activation, metric):
    """TransformerLens' way: one run of the corrupted batch per (layer, positions), a hook copying the clean values."""
    name = f"blocks.{layer}.hook_{activation}"

    def setter(x, hook):
        x = x.clone()
        x[:, positions] = clean_cache[name][:, positions]
        return x

    return float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, setter)])))


@pytest.mark.parametrize("activation", ["resid_pre", "attn_out"])
def test_every_cell_equals_a_run_patched_by_hand(model, pair, activation):
    clean, corrupted = pair
    clean_logits, clean_cache = model.run_with_cache(clean)
    metric = distance_to(clean_logits)
    n = clean["input_ids"].shape[1]
    audio = model.modality_map(clean).positions("audio")
    positions = [int(audio[0]), int(audio[7]), n - 3, n - 1]
    result = activation_patch(model, corrupted, clean, metric, activation=activation, positions=positions,
                              max_rows_per_pass=3)
    assert result.values.shape == (model.cfg.n_layers, 4) and result.labels == positions
    for li in range(model.cfg.n_layers):
        for pi, p in enumerate(positions):
            expected = reference(model, corrupted, clean_cache, li, [p], activation, metric)
            assert abs(float(result.values[li, pi]) - expected) < 1e-5
    assert result.clean_value < 2e-5 and abs(result.corrupted_value - float(metric(model(corrupted)))) < 1e-5
    assert result.corrupted_value > 0.05 and len(set(result.values.flatten().tolist())) > 4  # cells differ
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "position", "metric"] and len(frame) == 4 * model.cfg.n_layers


def test_groups_of_positions_and_known_answers(model, av_pair):
    clean, corrupted = av_pair
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter="blocks.1.hook_resid_pre")
    metric = distance_to(clean_logits)
    groups = {"audio": "audio", "video": "video", "everything": list(range(clean["input_ids"].shape[1]))}
    result = activation_patch(model, corrupted, clean, metric, positions=groups)
    assert result.labels == ["audio", "video", "everything"]
    assert result.corrupted_value > 0.05
    # patching every position of the first block's input is the clean run; the audio is all that differs there
    assert float(result.values[0, 2]) < 1e-5 and float(result.values[0, 0]) < 1e-5
    assert abs(float(result.values[0, 1]) - result.corrupted_value) < 1e-5  # the videos are the same
    audio = model.modality_map(clean).positions("audio").tolist()
    expected = reference(model, corrupted, clean_cache, 1, audio, "resid_pre", metric)
    assert abs(float(result.values[1, 0]) - expected) < 1e-5


def test_runs_that_do_not_align_are_refused(model, omni_batches, pair):
    clean, _ = pair
    metric = distance_to(model(clean))
    with pytest.raises(InputError, match="align position by position"):
        activation_patch(model, omni_batches["audio+video"], clean, metric, positions=[0])
    with pytest.raises(UnknownHookError, match="hook_resid_psot"):
        activation_patch(model, clean, clean, metric, activation="resid_psot", positions=[0])
    with pytest.raises(InputError, match="no image positions"):
        activation_patch(model, clean, clean, metric, positions="image")
