"""End-to-end benchmark: one GRACE training step (forward, GraceLoss, backward, AdamW step), split into stages.

python -m benchmarks.bench_model    # tiny and ViT-B-sized configs at 16 and 64 frames -> results/model.json

Each stage is timed alone, forward+backward, on the tensors it sees inside the step (captured by hooks from a real
forward): backbone (VideoMAE), motion+selection, text (CLIP text tower), cost+OT (the caption's alignment: cost
matrix, Sinkhorn, v_txt and s_ot), class-prompt OT (every class prompt against every clip, B x C problems in one
call), heads (fusion MLP and auxiliary head). `step` is the whole step; the stages' sum falls
short of it by the projections, the loss and the optimizer. Provider `auto` runs the fast op backends, `torch`
the op references (op_backends="torch") on the stages that use the ops (and the tiny step), so the ratio shows
what the fast ops buy. ViT-B step and backbone rows are 2 runs without warm-up (a 64-frame step takes a minute on 2
cores); the other stages get the usual warm-up and repeats at every size.
dtype bf16 is the step under bf16 autocast (amp bf16, what amp auto runs on a GPU or a CPU with AMX or AVX512-BF16),
backward outside it, with the fast op backends; `speedup_vs_fp32` is the fp32 step's median over its.
"""

import tempfile

import torch

from benchmarks.utils import add_ratio_vs, add_ratios, benchmark_main, measure
from grace_fast import ops
from grace_fast.model import GraceLoss, GraceModel
from grace_fast.model.tiny import CORPUS, build_tiny_tokenizer, tiny_config, tiny_text_config

SHAPES = {  # name -> (size, frames, batch)
    "tiny-16f": ("tiny", 16, 8),
    "tiny-64f": ("tiny", 64, 8),
    "vit-b-16f": ("vit-b", 16, 1),
    "vit-b-64f": ("vit-b", 64, 1),
}
OP_NAMES = ("cost_matrix", "sinkhorn", "motion_weights")
SLOW_STAGES, SLOW_REPS = ("step", "backbone"), {"reps": 2, "warmup": 0, "min_seconds": 0.0}  # seconds per ViT-B run


def build_model(size: str, frames: int, tokenizer: str, ops_backend: str = "auto") -> GraceModel:
    """The tiny random config, or ViT-B/16 VideoMAE (224 px) with CLIP's base text tower (12 layers, width 512)."""
    backends = dict.fromkeys(OP_NAMES, ops_backend) if ops_backend != "auto" else {}
    if size == "tiny":
        return GraceModel(tiny_config(tokenizer, frames=frames, op_backends=backends))
    text = tiny_text_config(tokenizer, hidden_size=512, intermediate_size=2048, num_hidden_layers=12)
    text["num_attention_heads"] = 8
    config = tiny_config(tokenizer, frames=frames, image_size=224, video={}, text=text, dim=512, attention_heads=8)
    return GraceModel(config.replace(op_backends=backends))


def _backward(*outputs):
    """Backpropagate a random upstream gradient from the floating tensors that need one."""
    outs = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
    torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])


def _leaf(x):
    return x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def stage_fns(model: GraceModel, pixels: torch.Tensor, texts: list[str]) -> dict:
    """name -> zero-argument callable running that stage forward+backward on the inputs it sees in the step."""
    seen = {"align": []}
    hooks = [
        model.video.register_forward_hook(lambda m, args, out: seen.setdefault("X", out)),
        model.alignment.register_forward_pre_hook(lambda m, args: seen["align"].append(args)),  # classes, caption
        model.head.register_forward_pre_hook(lambda m, args: seen.setdefault("head", args)),
        model.aux_head.register_forward_pre_hook(lambda m, args: seen.setdefault("aux_head", args)),
    ]
    with torch.no_grad():
        model(pixels, texts)
    for hook in hooks:
        hook.remove()
    X = _leaf(seen["X"])
    classes, caption = ([_leaf(a) for a in args] for args in seen["align"])
    head, aux_head = ([_leaf(a) for a in seen[name]] for name in ("head", "aux_head"))
    config = model.config

    def motion_selection():
        Xw, w = model.motion(X)
        kept = ops.select_tokens(Xw, w, ratio=config.rho, mass=config.mass, max_tokens=config.max_tokens)
        _backward(kept.tokens, kept.weights)

    return {
        "backbone": lambda: _backward(model.video(pixels)),
        "motion+selection": motion_selection,
        "text": lambda: _backward(model.text(texts).embeddings),
        "cost+OT": lambda: _backward(*model.alignment(*caption)),
        "class-prompt OT": lambda: _backward(*model.alignment(*classes)),
        "heads": lambda: _backward(model.head(*head), *model.aux_head(*aux_head)),
    }


def step_fn(model: GraceModel, pixels: torch.Tensor, texts: list[str], labels: torch.Tensor, autocast=None):
    """One training step, under autocast to the dtype `autocast` (None: full precision) as the trainer runs it."""
    loss_fn = GraceLoss(model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(pixels.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = loss_fn(model(pixels, texts), labels).total
        loss.backward()
        optimizer.step()

    return step


def run(shapes=SHAPES, device="cpu") -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tokenizer:
        build_tiny_tokenizer(tokenizer)
        for name, (size, frames, batch) in shapes.items():
            for provider in ("auto", "torch"):
                torch.manual_seed(0)
                model = build_model(size, frames, tokenizer, provider).to(device).train()
                side = model.config.image_size
                pixels = torch.randn(batch, frames, 3, side, side, device=device)
                texts = [CORPUS[i % len(CORPUS)] for i in range(batch)]
                labels = torch.arange(batch, device=device) % model.config.num_classes
                fns = {"step": step_fn(model, pixels, texts, labels), **stage_fns(model, pixels, texts)}
                if provider == "torch":  # only these depend on the op backends; a ViT-B step is backbone-bound
                    keep = ("motion+selection", "cost+OT", "class-prompt OT")
                    if size == "tiny":
                        keep = ("step", *keep)
                    fns = {stage: fns[stage] for stage in keep}
                runs = [(stage, "fp32", fn) for stage, fn in fns.items()]
                if provider == "auto":
                    runs.append(("step", "bf16", step_fn(model, pixels, texts, labels, autocast=torch.bfloat16)))
                for stage, dtype, fn in runs:
                    reps = SLOW_REPS if size == "vit-b" and stage in SLOW_STAGES else {"reps": 5}
                    row = {"op": "model", "provider": provider, "mode": "train step", "shape": name, "stage": stage}
                    row |= {"dtype": dtype, "frames": frames, "batch": batch}
                    rows.append(row | measure(fn, device=device, **reps))
    add_ratios(rows, ["torch"], ("shape", "stage", "dtype"))
    return add_ratio_vs(rows, "speedup_vs_fp32", {"dtype": "fp32"}, ("provider", "shape", "stage"))


COLUMNS = ["provider", "shape", "stage", "dtype", "batch", "median_ms", "p20_ms", "p80_ms", "speedup_vs_torch"]
COLUMNS += ["speedup_vs_fp32"]

if __name__ == "__main__":
    benchmark_main("model", __doc__, SHAPES, run, COLUMNS)
