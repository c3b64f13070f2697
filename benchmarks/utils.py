"""Timing, peak memory, machine description and result files shared by every benchmark.

Rows are dicts, one per (op, provider, mode, shape, dtype, machine); `add_ratios` adds a speed-up column
against each baseline provider measured in the same process.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from grace_fast import hardware
from grace_fast.files import write_atomic

# kineto prints "USDT: ... profiler_start/stop" on stderr around every memory profile unless told otherwise
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
RESULTS = Path(__file__).resolve().parent / "results"
COMPILED = "compiled-reference"  # the provider name of torch.compile(an op's reference)


def compiled(fn: Callable) -> Callable:
    """torch.compile(fn) (inductor, shapes static) with dynamo's caches emptied first, so that each benchmark case
    compiles for its own shapes instead of reusing, or running out of, the cache of earlier ones. The compiling
    happens on the first call: the warm-up of measure_together."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], **options) -> dict:
    """Median and 20/80% quantiles of fn's wall time in ms (options as for measure_together)."""
    return measure_together({"fn": fn}, **options)["fn"]


def measure_together(
    fns: dict[str, Callable[[], object]],
    *,
    device: str = "cpu",
    warmup: int = 2,
    reps: int = 7,
    min_seconds: float = 0.5,
    max_reps: int = 1000,
) -> dict[str, dict]:
    """{name: median and 20/80% quantiles of fns[name]'s wall time in ms}, the functions called in turn, round
    after round, so that a ratio between them sees one state of a shared machine. After warm-up: at least `reps`
    rounds and more (up to max_reps) until min_seconds per function have been spent, so that sub-millisecond
    calls get hundreds of runs."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < reps or (time.perf_counter() - start < min_seconds * len(fns) and rounds < max_reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10, method="inclusive")
        out[name] = {"median_ms": statistics.median(ts), "p20_ms": q[1], "p80_ms": q[7], "reps": len(ts)}
    return out


def peak_memory_mb(fn: Callable[[], object], *, device: str = "cpu") -> float:
    """Peak of the memory fn allocates through torch (tensors it frees count until freed), in MiB."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def machine() -> dict:
    """What the numbers were measured on (with the CPU flags that decide bf16 autocast: grace_fast.hardware)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **hardware.describe(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


# fields that are measurements, besides every *_ms, speedup_* and peak* field
MEASURED = ("reps", "plan_err", "input_mb", "lowest", "highest", "verdict", "gbs", "copy_share", "copy_gbs")


def describes(field: str) -> bool:
    """A row's field that names what was measured, not a measurement (the report's leading columns, the keys that
    match rows across runs)."""
    return field not in MEASURED and not field.endswith("_ms") and not field.startswith(("speedup", "peak"))


def add_ratios(rows: list[dict], baselines: list[str], keys: tuple[str, ...]) -> list[dict]:
    """Adds `speedup_vs_<baseline>` = baseline median / row median to rows sharing the values of `keys`."""
    medians = {(r["provider"], *(r[k] for k in keys)): r["median_ms"] for r in rows}
    for row in rows:
        for base in baselines:
            ref = medians.get((base, *(row[k] for k in keys)))
            row[f"speedup_vs_{base}"] = None if ref is None else round(ref / row["median_ms"], 3)
    return rows


def add_ratio_vs(rows: list[dict], column: str, baseline: dict, keys: tuple[str, ...]) -> list[dict]:
    """Adds `column` = the median of the row that has baseline's field values and shares the values of `keys`, over
    the row's median (None where no such row was measured), e.g. bf16 against fp32 rows of the same shape."""
    medians = {
        tuple(r.get(k) for k in keys): r["median_ms"] for r in rows if all(r.get(f) == v for f, v in baseline.items())
    }
    for row in rows:
        ref = medians.get(tuple(row.get(k) for k in keys))
        row[column] = None if ref is None else round(ref / row["median_ms"], 3)
    return rows


def write_results(name: str, rows: list[dict], out_dir: Path = RESULTS) -> Path:
    """Writes {"machine": ..., "rows": [...]} to <out_dir>/<name>.json atomically."""
    path = out_dir / f"{name}.json"
    write_atomic(path, (json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n").encode())
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Prints rows as an aligned text table of the given columns that some row has (floats to 3 significant
    digits)."""
    columns = [c for c in columns if any(r.get(c) is not None for r in rows)]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return "-" if v is None else str(v)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))


def benchmark_main(name: str, doc: str, shapes: dict, run: Callable[..., list[dict]], columns: list[str]) -> None:
    """The command line of a bench_<op>.py: choose shapes and device, print the table, write <out>/<name>.json."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(shapes), default=list(shapes))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the folder of the JSON (default: results/)")
    args = parser.parse_args()
    rows = run({k: shapes[k] for k in args.shapes}, device=args.device)
    print_table(rows, columns)
    print(f"written to {write_results(name + result_suffix(args.device), rows, args.out)}")


def result_suffix(device: str) -> str:
    """ "" for CPU results, "-<gpu name>" (e.g. "-nvidia-h100-80gb-hbm3") for GPU ones, so both live side by side."""
    if device == "cpu":
        return ""
    return "-" + "".join(c if c.isalnum() else "-" for c in torch.cuda.get_device_name().lower()).strip("-")
