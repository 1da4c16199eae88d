"""nnsight's tracing over the hook points: `nnsight.NNsight(hooked_model)` reads and sets them as run_with_hooks does."""

from __future__ import annotations

import pytest
import torch

from hooked_av import HookedAVModel
from hooked_av.testing.tiny import synthetic_audio, synthetic_video, tiny_omni_thinker

nnsight = pytest.importorskip("nnsight")


@pytest.fixture(scope="module")
def traced():
    """A model of its own: NNsight installs its controller on every module for good (inert outside a trace)."""
    hf_model, processor = tiny_omni_thinker(seed=3)
    model = HookedAVModel.from_hf_model(hf_model, processor)
    batch = model.prepare_inputs("Describe what you see and hear.", video=synthetic_video(seconds=2.0),
                                 audio=synthetic_audio(seconds=2.0))
    return model, nnsight.NNsight(model), batch


def test_reading_a_pattern_and_a_residual_equals_run_with_hooks(traced):
    model, nn_model, batch = traced
    with torch.no_grad(), nn_model.trace(batch):
        resid = nn_model.blocks[0].hook_resid_post.output.save()  # in execution order, as nnsight asks
        pattern = nn_model.blocks[1].attn.hook_pattern.output.save()
        logits = nn_model.output.save()
    seen = {}
    # While a trace runs every hook point fires and every layer is eager (see is_traced), so the exact reference
    # hooks every hook point too (but hook_result, formed only with cfg.use_attn_result, as in TransformerLens).
    with torch.no_grad():
        expected = model.run_with_hooks(batch, fwd_hooks=[
            (lambda name: not name.endswith("hook_result"), lambda x, hook: seen.__setitem__(hook.name, x.clone()))])
        fused = model.run_with_hooks(batch, fwd_hooks=[
            ("blocks.1.attn.hook_pattern", lambda x, hook: seen.__setitem__("fused", x.clone()))])
    n = batch["input_ids"].shape[1]
    assert pattern.shape == (1, model.cfg.n_heads, n, n)
    torch.testing.assert_close(pattern, seen["blocks.1.attn.hook_pattern"], rtol=0, atol=0)
    torch.testing.assert_close(pattern, seen["fused"], rtol=0, atol=1e-6)  # layer 0 fused: float noise only
    torch.testing.assert_close(resid, seen["blocks.0.hook_resid_post"], rtol=0, atol=0)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, fused, rtol=0, atol=1e-5)
    assert pattern.sum(-1).sub(1).abs().max() < 1e-5  # a softmax over keys, not an empty read


def test_setting_a_residual_equals_a_run_with_hooks_edit(traced):
    model, nn_model, batch = traced
    audio = model.modality_map(batch).mask("audio")[0]
    with torch.no_grad(), nn_model.trace(batch):
        nn_model.blocks[0].hook_resid_post.output[:, audio] = 0.0
        edited = nn_model.output.save()

    def zero_audio(x, hook):
        x[:, audio] = 0.0
        return x

    with torch.no_grad():
        fused = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", zero_audio)])
        every_point = lambda name: not name.endswith(("hook_result", "blocks.0.hook_resid_post"))  # noqa: E731
        expected = model.run_with_hooks(batch, fwd_hooks=[(every_point, lambda x, hook: x),
                                                          ("blocks.0.hook_resid_post", zero_audio)])
        clean = model(batch)
    torch.testing.assert_close(edited, expected, rtol=0, atol=0)  # the same kernels as the trace (see above)
    torch.testing.assert_close(edited, fused, rtol=0, atol=1e-5)
    assert (edited - clean).abs().max() > 1e-3  # the edit reached the logits


def test_outside_a_trace_the_wrapped_model_stays_fused(traced):
    model, nn_model, batch = traced
    with torch.no_grad(), nn_model.trace(batch):
        nn_model.output.save()
    with torch.no_grad():
        model(batch)  # the controllers NNsight left on every hook point are inert here
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "sdpa"]
