"""Inference latency at batch 1 and 8: p50, p90 and p99 after warm-up, in both text modes, in fp32 eager, bf16
(autocast), compiled (torch.compile) and bf16+compiled, through Predictor.forward as a user runs it.

python -m benchmarks.bench_inference    # tiny and ViT-B-sized configs, 16 frames -> results/inference.json

Text modes: `caption` aligns a refined description per clip (encoded every call) and scores the classes by their
cached prompts for the auxiliary head, `class-prompts` only scores the classes by their cached prompts (the
low-latency mode; nothing text-side is encoded per call).
Provider `auto` runs the fast op backends, `torch` the op references (fp32 eager only). `speedup_vs_fp32-eager` is
the provider's fp32 eager p50 over the row's. The compiled variants compile afresh for each batch size, in the
warm-up. ViT-B takes seconds per call on 2 cores: its rows are CALLS_VIT_B calls (too few for a stable p99).
"""

import copy
import statistics
import tempfile
import time

import torch

from benchmarks.bench_model import build_model
from benchmarks.utils import add_ratio_vs, add_ratios, benchmark_main
from grace_fast.model.tiny import CORPUS, build_tiny_tokenizer
from grace_fast.predict import Predictor

SHAPES = {"tiny-16f": ("tiny", 16), "vit-b-16f": ("vit-b", 16)}
BATCHES = (1, 8)
VARIANTS = {  # name -> (Predictor dtype, compile)
    "fp32-eager": ("float32", False),
    "bf16": ("bfloat16", False),
    "compiled": ("float32", True),
    "bf16+compiled": ("bfloat16", True),
}
CALLS, WARMUP = 100, 5
CALLS_VIT_B = {1: 10, 8: 3}  # per batch size; warm-up 2 calls (the first compiles)


def latencies(fn, device: str, calls: int = CALLS, warmup: int = WARMUP) -> list[float]:
    """Wall time of each of `calls` calls in ms, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _text_mode_rows(predictor: Predictor, pixels: torch.Tensor, calls: int, warmup: int, **fields) -> list[dict]:
    """The latency rows of predictor on pixels [B, T, 3, S, S] in both text modes."""
    rows = []
    for mode, text in (("caption", CORPUS[:1] * len(pixels)), ("class-prompts", None)):
        with torch.inference_mode():
            times = latencies(lambda text=text: predictor.forward(pixels, text), pixels.device.type, calls, warmup)
        q = statistics.quantiles(times, n=100, method="inclusive")
        timing = {"median_ms": q[49], "p20_ms": q[19], "p80_ms": q[79], "p90_ms": q[89], "p99_ms": q[98]}
        rows.append({"op": "inference", **fields, "mode": mode, **timing, "calls": len(times)})
    return rows


def run(shapes=SHAPES, device="cpu", batches=BATCHES, variants=VARIANTS) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tokenizer:
        build_tiny_tokenizer(tokenizer)
        for name, (size, frames) in shapes.items():
            for provider in ("auto", "torch"):
                torch.manual_seed(0)
                model = build_model(size, frames, tokenizer, provider).to(device).eval()
                side = model.config.image_size
                for batch in batches:
                    pixels = torch.randn(batch, frames, 3, side, side, device=device)
                    calls, warmup = (CALLS, WARMUP) if size == "tiny" else (CALLS_VIT_B[batch], 2)
                    for variant, (dtype, compile) in variants.items():
                        if provider == "torch" and variant != "fp32-eager":
                            continue  # the op references only show what the fast ops buy
                        predictor = _predictor(model, device, dtype, compile)
                        fields = {"provider": provider, "variant": variant, "shape": name, "batch": batch}
                        rows += _text_mode_rows(predictor, pixels, calls, warmup, **fields)
    add_ratios(rows, ["torch"], ("shape", "mode", "batch", "variant"))
    keys = ("provider", "shape", "mode", "batch")
    return add_ratio_vs(rows, "speedup_vs_fp32-eager", {"variant": "fp32-eager"}, keys)


def _predictor(model, device: str, dtype: str, compile: bool) -> Predictor:
    """A Predictor of model; a compiled one compiles a copy afresh, for static shapes of this batch size (not graphs
    made dynamic by the previous one's)."""
    if compile:
        torch._dynamo.reset()
        model = copy.deepcopy(model)
    return Predictor(model, None, device, dtype=dtype, compile=compile)


COLUMNS = ["provider", "variant", "shape", "mode", "batch", "median_ms", "p90_ms", "p99_ms", "calls"]
COLUMNS += ["speedup_vs_torch", "speedup_vs_fp32-eager"]

if __name__ == "__main__":
    benchmark_main("inference", __doc__, SHAPES, run, COLUMNS)
