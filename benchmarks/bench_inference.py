"""Inference latency at batch 1: p50, p90 and p99 over at least 100 calls after warm-up, in both text modes.

python -m benchmarks.bench_inference    # tiny and ViT-B-sized configs, 16 frames -> results/inference.json

Text modes: `caption` aligns a refined description per clip (encoded every call) and scores the classes by their
cached prompts for the auxiliary head, `class-prompts` only scores the classes by their cached prompts (the
low-latency mode; nothing text-side is encoded per call).
Provider `auto` runs the fast op backends, `torch` the op references.
"""

import statistics
import tempfile
import time

import torch

from benchmarks.bench_model import build_model
from benchmarks.utils import add_ratios, benchmark_main
from grace_fast.model.tiny import CORPUS, build_tiny_tokenizer

SHAPES = {"tiny-16f": ("tiny", 16), "vit-b-16f": ("vit-b", 16)}
CALLS, WARMUP = 100, 5


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


def run(shapes=SHAPES, device="cpu") -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tokenizer:
        build_tiny_tokenizer(tokenizer)
        for name, (size, frames) in shapes.items():
            for provider in ("auto", "torch"):
                torch.manual_seed(0)
                model = build_model(size, frames, tokenizer, provider).to(device).eval()
                side = model.config.image_size
                pixels = torch.randn(1, frames, 3, side, side, device=device)
                for mode, text in (("caption", [CORPUS[0]]), ("class-prompts", None)):
                    with torch.inference_mode():
                        times = latencies(lambda model=model, pixels=pixels, text=text: model(pixels, text), device)
                    q = statistics.quantiles(times, n=100, method="inclusive")
                    row = {"op": "inference", "provider": provider, "mode": mode, "shape": name, "batch": 1}
                    row |= {"median_ms": q[49], "p20_ms": q[19], "p80_ms": q[79], "p90_ms": q[89], "p99_ms": q[98]}
                    rows.append(row | {"calls": len(times)})
    return add_ratios(rows, ["torch"], ("shape", "mode"))


COLUMNS = ["provider", "shape", "mode", "median_ms", "p90_ms", "p99_ms", "calls", "speedup_vs_torch"]

if __name__ == "__main__":
    benchmark_main("inference", __doc__, SHAPES, run, COLUMNS)
