"""benchmarks/results/REPORT.md from the JSON files of the benchmarks: machine, one table per benchmark (medians
with their 20-80% spread, ratios against each baseline), the scaling exponents and their plots."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.bench_scaling import growth_exponents  # noqa: E402
from benchmarks.utils import COMPILED, RESULTS, describes  # noqa: E402
from grace_fast.files import write_atomic, write_figure  # noqa: E402

ORDER = ["cost_matrix", "sinkhorn", "motion_weights", "scaling", "model", "inference"]
TIMING = {"median_ms", "p20_ms", "p80_ms", "reps"}
VS_COMPILED = f"speedup_vs_{COMPILED}"


def amx_cpu(machine: dict) -> bool:
    """A result measured on a CPU with AMX (utils.machine() records the flags)."""
    return "amx_bf16" in machine.get("cpu_flags", ())


def cpu_without_bf16(machine: dict) -> bool:
    return machine.get("native_bf16") is False


# The issues' targets: (benchmark, what, the rows it reads, field, "min" >= bound or "max" <= bound[, the machines
# it is for: a test of the result's machine description])
TARGETS = [
    ("cost_matrix", "cpu vs torch, fp32, every shape, forward and full", {"provider": "cpu", "dtype": "fp32"},
     "speedup_vs_torch", "min", 1.0),
    ("cost_matrix", "cpu vs torch, bf16, every shape, forward and full", {"provider": "cpu", "dtype": "bf16"},
     "speedup_vs_torch", "min", 1.5),
    ("sinkhorn", "cpu vs POT batch log_sinkhorn, paper shape, 50 iterations", {"provider": "cpu",
     "marginals": "balanced", "shape": "paper-rho0.5", "iters": "50 fixed"}, "speedup_vs_pot-batch-log", "min", 4.0),
    ("sinkhorn", "cpu vs POT batch plain sinkhorn, paper shape, 50 iterations", {"provider": "cpu",
     "marginals": "balanced", "shape": "paper-rho0.5", "iters": "50 fixed"}, "speedup_vs_pot-batch-plain", "min", 1.0),
    ("sinkhorn", "cpu forward+backward peak over sizeof(C), 50 and 500 iterations, balanced and semi-relaxed",
     {"provider": "cpu", "mode": "full"}, "peak_over_C", "max", 4.0),
    ("sinkhorn", "cpu semi-relaxed forward vs POT batch log_sinkhorn (balanced), paper shape, 50 iterations",
     {"provider": "cpu", "marginals": "semi-relaxed", "shape": "paper-rho0.5", "iters": "50 fixed",
      "mode": "forward"}, "speedup_vs_pot-batch-log", "min", 4.0),
    ("sinkhorn", "class prompts 32 x 7, forward+backward, batched vs a loop over classes", {"provider": "batched cpu",
     "shape": "class-prompts-train", "mode": "full"}, "speedup_vs_loop over classes", "min", 3.0),
    ("motion_weights", "cpu vs torch, forward+backward", {"provider": "cpu", "mode": "full"}, "speedup_vs_torch", "min",
     3.0),
    ("motion_weights", "cpu forward+backward peak over sizeof(X)", {"provider": "cpu", "mode": "full"}, "peak_over_X",
     "max", 2.0),
    ("motion_weights", "cpu vs torch.compile(reference), fp32, forward+backward", {"provider": "cpu", "mode": "full",
     "dtype": "fp32"}, VS_COMPILED, "min", 3.0),
    ("motion_weights", "cpu vs torch.compile(reference), bf16, forward+backward", {"provider": "cpu", "mode": "full",
     "dtype": "bf16"}, VS_COMPILED, "min", 3.0),
    ("cost_matrix", "cpu vs torch.compile(reference), fp32, forward+backward", {"provider": "cpu", "mode": "full",
     "dtype": "fp32"}, VS_COMPILED, "min", 2.0),
    ("cost_matrix", "cpu vs torch.compile(reference), bf16, forward+backward", {"provider": "cpu", "mode": "full",
     "dtype": "bf16"}, VS_COMPILED, "min", 2.0),
    ("inference", "AMX CPU: ViT-B batch 1 class prompts, bf16 p50 vs fp32 eager", {"provider": "auto",
     "variant": "bf16", "shape": "vit-b-16f", "batch": 1, "mode": "class-prompts"}, "speedup_vs_fp32-eager", "min",
     8.0, amx_cpu),
    ("inference", "CPU without bf16 hardware: compiled p50 vs fp32 eager, every shape", {"provider": "auto",
     "variant": "compiled"}, "speedup_vs_fp32-eager", "min", 1.3, cpu_without_bf16),
]  # fmt: skip


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def table(rows: list[dict]) -> str:
    """A markdown table: the rows' descriptive fields, median (p20-p80) in ms, then every other measurement."""
    fields = list(dict.fromkeys(k for r in rows for k in r if k not in TIMING and k != "op"))
    lead = [f for f in fields if describes(f)]
    tail = [f for f in fields if f not in lead]
    header = [*lead, "median ms (p20-p80)", *tail]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        timing = "-" if "median_ms" not in r else f"{r['median_ms']:.3g} ({r['p20_ms']:.3g}-{r['p80_ms']:.3g})"
        lines.append(
            "| " + " | ".join([*(_cell(r.get(f)) for f in lead), timing, *(_cell(r.get(f)) for f in tail)]) + " |"
        )
    return "\n".join(lines)


def headline(results: dict[str, dict]) -> str:
    """The issues' targets against the worst matching row of each result: a markdown table."""
    lines = ["| benchmark | target | worst measured | met |", "| --- | --- | --- | --- |"]
    for name, what, where, field, worst, bound, *machines in TARGETS:
        if machines and not machines[0](results.get(name, {}).get("machine", {})):
            continue
        values = [
            r[field]
            for r in results.get(name, {"rows": []})["rows"]
            if field in r and all(r.get(k) == v for k, v in where.items())
        ]
        if not values:
            continue
        value = min(values) if worst == "min" else max(values)
        met = value >= bound if worst == "min" else value <= bound
        sign = ">=" if worst == "min" else "<="
        lines.append(f"| {name} | {what}: {field} {sign} {bound:g} | {value:.3g} | {'yes' if met else 'NO'} |")
    return "\n".join(lines)


def scaling_plots(rows: list[dict], out_dir: Path, suffix: str) -> list[Path]:
    """Time and peak memory against size, one PNG per series, log-log."""
    paths = []
    for series in dict.fromkeys(r["series"] for r in rows):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for op in dict.fromkeys(r["op"] for r in rows if r["series"] == series):
            points = [r for r in rows if r["series"] == series and r["op"] == op]
            sizes = [p["size"] for p in points]
            axes[0].plot(sizes, [p["median_ms"] for p in points], "o-", label=op)
            axes[1].plot(sizes, [p["peak_mb"] for p in points], "o-", label=op)
        for ax, label in zip(axes, ("forward+backward ms", "peak MiB"), strict=True):
            ax.set(xscale="log", yscale="log", xlabel=series, ylabel=label)
            ax.legend()
        fig.tight_layout()
        path = out_dir / f"scaling-{series.split()[0].replace(chr(39), '')}{suffix}.png"
        paths.append(write_figure(fig, path))
    return paths


def write_report(out_dir: Path = RESULTS, suffix: str = "") -> Path:
    """Writes REPORT<suffix>.md from <name><suffix>.json files in out_dir (suffix "-cuda" for GPU results)."""
    found = {name: out_dir / f"{name}{suffix}.json" for name in ORDER if (out_dir / f"{name}{suffix}.json").exists()}
    if not found:
        raise FileNotFoundError(f"no benchmark results in {out_dir}; run python -m benchmarks --all first")
    results = {name: json.loads(path.read_text()) for name, path in found.items()}
    machine = next(iter(results.values()))["machine"]
    text = ["# grace_fast benchmark report", ""]
    text += [f"- {key}: {value}" for key, value in machine.items()]  # the CPU and its bf16 flags among them
    text += [
        "",
        "Medians of repeated runs in one process, ms, with the 20-80% quantiles; `speedup_vs_X` is X's median",
        "over the row's; `peak_over_C` is the peak memory the call allocates over sizeof(C).",
        "",
        "## Targets",
        "",
        headline(results),
        "",
    ]
    for name, result in results.items():
        text += [f"## {name}", "", table(result["rows"]), ""]
        if name == "scaling":
            text += ["Growth exponents (slope of log time / log peak memory against log size):", ""]
            for (op, series), slope in growth_exponents(result["rows"]).items():
                text.append(f"- {op}, {series}: time ~ size^{slope['time']:.2f}, memory ~ size^{slope['memory']:.2f}")
            text.append("")
            text += [f"![{p.stem}]({p.name})" for p in scaling_plots(result["rows"], out_dir, suffix)] + [""]
    path = out_dir / f"REPORT{suffix}.md"
    write_atomic(path, "\n".join(text).encode())
    return path
