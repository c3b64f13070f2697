"""Where ViT-B GRACE's fp32 eager inference spends its time (batch 1, 16 frames, class prompts), by torch.profiler's
self CPU time per op: the share that torch.compile could fuse is what is not a library GEMM, attention or conv.

PYTHONPATH=. python docs/runs/vit_b_profile.py > docs/runs/vit-b-profile.json
"""

import json
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_model import build_model
from benchmarks.utils import machine
from grace_fast.model.tiny import build_tiny_tokenizer
from grace_fast.predict import Predictor

LIBRARY = {  # GEMMs, attention and the tubelet embedding's conv: what inductor leaves to the library kernels
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::mkldnn_convolution",
}

with tempfile.TemporaryDirectory() as tokenizer:
    build_tiny_tokenizer(tokenizer)
    torch.manual_seed(0)
    predictor = Predictor(build_model("vit-b", 16, tokenizer).eval(), None, "cpu", dtype="float32")
    pixels = torch.randn(1, 16, 3, 224, 224)
    with torch.inference_mode():
        predictor.forward(pixels, None)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            predictor.forward(pixels, None)
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
shares = {e.key: round(e.self_cpu_time_total / total, 4) for e in sorted(events, key=lambda e: -e.self_cpu_time_total)}
library = sum(share for op, share in shares.items() if op in LIBRARY)
record = {"machine": machine(), "library_share": round(library, 4), "top_ops": dict(list(shares.items())[:10])}
print(json.dumps(record, indent=1))
