"""GraceModel end to end on tiny random configs: shapes, the data flow of both text modes, gradients, the ablation
switches, backends, errors."""

import math

import pytest
import torch

import grace_fast
from grace_fast import ops
from grace_fast.model import GraceLoss
from grace_fast.model.alignment import ALIGNMENTS
from grace_fast.ops._backends import SUPPORTED
from tests.model.conftest import TEXTS, clips


@pytest.mark.parametrize("frames", [16, 64])
def test_output_shapes(make_model, frames):
    model = make_model(frames=frames)
    out = model(clips(4, frames), TEXTS)
    T = frames // 2
    L, K = T * 16, math.ceil(0.5 * T * 16)
    N = out.text_ids.shape[1]
    assert out.logits.shape == out.aux_logits.shape == out.class_logits.shape == (4, 7)
    assert out.motion_weights.shape == (4, T, 4, 4)
    assert out.selected_index.shape == out.selected_mask.shape == (4, K)
    assert out.selected_index.max() < L
    assert out.caption.plan.shape == (4, N, K) and out.caption.mass.shape == (4, K)
    assert out.caption.v_txt.shape == (4, 16) and out.caption.similarity.shape == (4,)
    assert out.classes.plan.shape[:2] == (4, 7) and out.classes.plan.shape[3] == K
    assert out.video_embedding.shape == out.text_embedding.shape == (4, 16)
    torch.testing.assert_close(out.caption.mass.sum(1), torch.ones(4))
    torch.testing.assert_close(out.classes.mass.sum(2), torch.ones(4, 7))


def test_caption_mode_fuses_pool_v_txt_pool_u_and_s(make_model):
    model = make_model()
    out = model(clips(2), TEXTS[:2])
    caption = out.caption
    torch.testing.assert_close(caption.v_txt, torch.einsum("bk,bkd->bd", caption.mass, model_tokens(model, clips(2))))
    expected = model.head(out.video_embedding, caption.v_txt, out.text_embedding, caption.similarity)
    torch.testing.assert_close(out.logits, expected)
    other = model(clips(2), TEXTS[2:4])  # the same clips, other captions: another visual feature
    assert (other.caption.v_txt - caption.v_txt).norm(dim=1).min() > 1e-3


def model_tokens(model, pixels):
    """V [B, K, d]: the projected kept tokens that the model aligns (zeros on padding)."""
    config = model.config
    X, w = model.motion(model.video(pixels))
    kept = ops.select_tokens(X, w, ratio=config.rho, mass=config.mass, max_tokens=config.max_tokens)
    return model.video_proj(kept.tokens)


def test_class_prompt_mode_predicts_with_the_auxiliary_head(make_model):
    model = make_model()
    out = model(clips(3))
    assert out.caption is None and out.text_embedding is None and out.text_ids is None
    torch.testing.assert_close(out.logits, out.aux_logits)
    linear = model.aux_head.classifier(out.video_embedding)
    torch.testing.assert_close(out.aux_logits, linear + out.class_logits)
    scale = model.aux_head.class_scale.exp()
    torch.testing.assert_close(out.class_logits, out.classes.similarity * scale)
    captioned = model(clips(3), TEXTS[:3])  # the auxiliary head needs no caption
    torch.testing.assert_close(captioned.aux_logits, out.aux_logits)


def test_without_class_prompts_the_auxiliary_head_is_linear(make_model):
    out = make_model(class_prompts=None)(clips(2), TEXTS[:2])
    assert out.class_logits is None and out.classes is None and out.caption is not None
    torch.testing.assert_close(out.aux_logits, make_model().aux_head.classifier(out.video_embedding))


def test_each_class_is_scored_by_its_own_prompt(make_model):
    """Class c's score in the batched class-prompt call is the similarity of the clip with prompt c as its caption."""
    model = make_model()
    out = model(clips(2))
    for c, prompt in enumerate(model.config.class_prompts):
        alone = model(clips(2), [prompt, prompt]).caption
        torch.testing.assert_close(out.classes.similarity[:, c], alone.similarity, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.classes.mass[:, c], alone.mass, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("alignment", list(ALIGNMENTS))
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
    assert out.caption.plan.transpose(1, 2)[~out.selected_mask].abs().sum() == 0
    assert out.classes.mass[~out.selected_mask.unsqueeze(1).expand(2, 7, 100)].abs().sum() == 0


@pytest.mark.parametrize("alignment", list(ALIGNMENTS))
def test_alignment_switch(make_model, alignment):
    base = make_model()
    model = make_model(alignment=alignment)
    model.load_state_dict(base.state_dict(), strict=False)  # shared weights: only the alignment differs
    out, ref = model(clips(2), TEXTS[:2]), base(clips(2), TEXTS[:2])
    linear = model.aux_head.classifier(out.video_embedding)
    torch.testing.assert_close(linear, base.aux_head.classifier(ref.video_embedding))
    N, K = out.text_ids.shape[1], out.selected_index.shape[1]
    expected_plan = {"ot": (2, N, K), "ot_balanced": (2, N, K), "cross_attention": (2, N, K), "cosine": (2, 1, K)}
    plan = out.caption.plan
    assert (None if plan is None else tuple(plan.shape)) == expected_plan.get(alignment)
    assert (out.class_logits is None) == (alignment == "none")
    if alignment == "none":
        torch.testing.assert_close(out.aux_logits, linear)
    if alignment in ("ot_balanced", "none"):  # v_txt is the visual mean whatever the text (to Sinkhorn's tol 1e-4)
        torch.testing.assert_close(out.caption.v_txt, out.video_embedding, atol=5e-4, rtol=0)
    if alignment != "ot":
        assert not torch.allclose(out.logits, ref.logits)


@pytest.mark.parametrize("alignment", ["ot", "ot_balanced"])
def test_visual_marginal_motion_uses_the_selected_weights(make_model, alignment):
    out = make_model(alignment=alignment, visual_marginal="motion", tol=1e-6, max_iter=500)(clips(2), TEXTS[:2])
    X = make_model().video(clips(2))
    _, w = ops.motion_weights(X, mode="both")
    kept = w.flatten(1).gather(1, out.selected_index)
    b = kept / kept.sum(1, keepdim=True)
    if alignment == "ot_balanced":
        torch.testing.assert_close(out.caption.mass, b, atol=1e-5, rtol=0)
    else:  # b is the reference of the relaxed marginal: other weights, other mass
        uniform = make_model(alignment=alignment, tol=1e-6, max_iter=500)(clips(2), TEXTS[:2])
        assert (out.caption.mass - uniform.caption.mass).abs().sum(1).min() > 1e-3


OPS = tuple(SUPPORTED)


def _takes(op: str, backend: str, alignment: str) -> bool:
    """Whether op runs backend on the CPU tensors of the model's problems (the relaxed ones of "ot" included)."""
    if backend not in SUPPORTED[op]["cpu"]:
        return False
    if op != "sinkhorn" or alignment == "ot_balanced":
        return True
    try:
        ops.sinkhorn(torch.rand(1, 2, 3), tau_b=0.1, backend=backend)
    except ValueError:  # the backend does not solve relaxed problems (yet)
        return False
    return True


@pytest.mark.parametrize("alignment", ["ot", "ot_balanced"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_same_logits_with_every_op_backend(make_model, backend, alignment):
    """Each op that has the backend on CPU tensors runs it; the others run their torch reference."""
    uses = {op: backend for op in OPS if grace_fast.backends()[backend] and _takes(op, backend, alignment)}
    if not uses:
        pytest.skip(f"no op runs a {backend} backend here")
    fields = {"alignment": alignment, "tol": 0.0, "max_iter": 30}
    ref = make_model(op_backends=dict.fromkeys(OPS, "torch"), **fields)(clips(2), TEXTS[:2])
    out = make_model(op_backends=uses, **fields)(clips(2), TEXTS[:2])
    torch.testing.assert_close(out.motion_weights, ref.motion_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.caption.plan, ref.caption.plan, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out.classes.plan, ref.classes.plan, atol=1e-6, rtol=1e-4)
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
    assert calls == [3, 6]  # video once, text twice (captions, class prompts); each runs again in backward
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
