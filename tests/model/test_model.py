"""GraceModel end to end on tiny random configs: shapes, gradients, the ablation switches, backends, errors."""

import importlib
import math

import pytest
import torch

import grace_fast
from grace_fast import ops
from grace_fast.model import GraceLoss
from tests.model.conftest import TEXTS, clips


@pytest.mark.parametrize("frames", [16, 64])
def test_output_shapes(make_model, frames):
    model = make_model(frames=frames)
    out = model(clips(4, frames), TEXTS)
    T = frames // 2
    L, K = T * 16, math.ceil(0.5 * T * 16)
    N = out.text_ids.shape[1]
    assert out.logits.shape == out.aux_logits.shape == (4, 7)
    assert out.motion_weights.shape == (4, T, 4, 4)
    assert out.selected_index.shape == out.selected_mask.shape == (4, K)
    assert out.selected_index.max() < L
    assert out.plan.shape == (4, N, K) and out.ot_cost.shape == (4,)
    assert out.video_embedding.shape == out.text_embedding.shape == (4, 16)
    torch.testing.assert_close(out.plan.sum(dim=(1, 2)), torch.ones(4))
    assert out.prompt_classes is None


@pytest.mark.parametrize("alignment", ["ot", "cross_attention"])
def test_every_trainable_parameter_gets_a_gradient_from_grace_loss(make_model, alignment):
    model = make_model(alignment=alignment).train()
    out = model(clips(4), TEXTS)
    GraceLoss(model.config, class_weights=torch.rand(7) + 0.5)(out, torch.tensor([0, 3, 3, 6])).total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_motion_switch_sets_weights_and_selection(make_model):
    X = make_model().video(clips(2))  # the same backbone weights in every model below (same seed)
    seen = {}
    for motion in ["off", "temporal", "spatial", "both"]:
        out = make_model(motion=motion)(clips(2), TEXTS[:2])
        seen[motion] = out.motion_weights
        if motion == "off":
            assert (out.motion_weights == 1).all() and out.selected_index.shape == (2, 128)
            assert (out.selected_index == torch.arange(128)).all()  # every token kept, in order
        else:
            X_out, w = ops.motion_weights(X, mode=motion)
            torch.testing.assert_close(out.motion_weights, w)
            assert (out.selected_index == ops.select_tokens(X_out, w, ratio=0.5).index).all()
    assert not torch.allclose(seen["temporal"], seen["spatial"])


def test_beta_0_selects_by_motion_without_reweighting(make_model):
    on, off = make_model(motion_beta=1.0), make_model(motion_beta=0.0)
    a, b = on(clips(2), TEXTS[:2]), off(clips(2), TEXTS[:2])
    assert (a.selected_index == b.selected_index).all()
    assert not torch.allclose(a.video_embedding, b.video_embedding)


def test_adaptive_selection_pads_to_max_tokens(make_model):
    out = make_model(mass=0.3, max_tokens=100)(clips(2), TEXTS[:2])
    assert out.selected_mask.shape == (2, 100) and 0 < out.selected_mask.sum() < 200
    assert out.plan.transpose(1, 2)[~out.selected_mask].abs().sum() == 0


@pytest.mark.parametrize("alignment", ["ot", "cross_attention", "cosine", "none"])
def test_alignment_switch(make_model, alignment):
    base = make_model()
    model = make_model(alignment=alignment)
    model.load_state_dict(base.state_dict(), strict=False)  # shared weights: only the alignment differs
    out, ref = model(clips(2), TEXTS[:2]), base(clips(2), TEXTS[:2])
    torch.testing.assert_close(out.aux_logits, ref.aux_logits)
    N, K = out.text_ids.shape[1], out.selected_index.shape[1]
    expected_plan = {"ot": (2, N, K), "cross_attention": (2, N, K), "cosine": (2, 1, K), "none": None}[alignment]
    assert (None if out.plan is None else tuple(out.plan.shape)) == expected_plan
    assert (out.ot_cost is not None) == (alignment == "ot")
    if alignment != "ot":
        assert not torch.allclose(out.logits, ref.logits)


def test_visual_marginal_motion_uses_the_selected_weights(make_model):
    out = make_model(visual_marginal="motion", tol=1e-6, max_iter=500)(clips(2), TEXTS[:2])
    X = make_model().video(clips(2))
    _, w = ops.motion_weights(X, mode="both")
    kept = w.flatten(1).gather(1, out.selected_index)
    torch.testing.assert_close(out.plan.sum(1), kept / kept.sum(1, keepdim=True), atol=1e-5, rtol=0)


def test_class_prompt_mode_aligns_the_top_k_prompts(make_model):
    model = make_model(prompt_top_k=2)
    out = model(clips(3))
    assert (out.prompt_classes == out.aux_logits.topk(2, dim=1).indices).all()
    prompts = model.text.class_prompts()
    for b in range(3):
        expected = torch.cat([prompts.ids[c][prompts.mask[c]] for c in out.prompt_classes[b]])
        assert out.text_ids[b][out.text_mask[b]].tolist() == expected.tolist()
    again = model(clips(3))
    torch.testing.assert_close(again.logits, out.logits)


OPS = ("cost_matrix", "sinkhorn", "motion_weights")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_same_logits_with_every_op_backend(make_model, backend):
    """Each op that has the backend on CPU tensors runs it; the others run their torch reference."""
    uses = {op: backend for op in OPS if backend in importlib.import_module(f"grace_fast.ops.{op}").BACKENDS["cpu"]}
    if not grace_fast.backends()[backend] or not uses:
        pytest.skip(f"no op runs a {backend} backend here")
    ref = make_model(op_backends=dict.fromkeys(OPS, "torch"), tol=0.0, max_iter=30)(clips(2), TEXTS[:2])
    out = make_model(op_backends=uses, tol=0.0, max_iter=30)(clips(2), TEXTS[:2])
    torch.testing.assert_close(out.motion_weights, ref.motion_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.plan, ref.plan, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(make_model):
    grads, calls = [], []
    for checkpointing in (False, True):
        model = make_model(gradient_checkpointing=checkpointing).train()
        count = []
        for layers in (model.video.model.encoder.layer, model.text.model.encoder.layers):
            inner = next(layers[0].children())  # inside the checkpointed forward (the layer's own hooks are not)
            inner.register_forward_hook(lambda module, args, out, count=count: count.append(1))
        GraceLoss(model.config)(model(clips(2), TEXTS[:2]), torch.tensor([1, 2])).total.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        calls.append(len(count))
    assert calls == [2, 4]  # each checkpointed layer runs again in backward
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_bad_inputs_are_named(make_model):
    model = make_model()
    with pytest.raises(ValueError, match=r"pixel_values has 8 frames but the model is built for frames=16"):
        model(clips(2, frames=8), TEXTS[:2])
    with pytest.raises(ValueError, match=r"\[C, H, W\] = \[3, 32, 32\] \(image_size=32\), got \[3, 48, 48\]"):
        model(clips(2, size=48), TEXTS[:2])
    with pytest.raises(ValueError, match="text has 3 entries but pixel_values has batch size 2"):
        model(clips(2), TEXTS[:3])
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, T, C, H, W\], got \(16, 3, 32, 32\)"):
        model(clips(1)[0], TEXTS[:1])
    with pytest.raises(ValueError, match="no text given and the config has no class_prompts"):
        make_model(class_prompts=None)(clips(1))
