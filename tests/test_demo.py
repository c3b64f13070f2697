"""grace-fast demo on a small set, in caption mode: every (variant, seed) trained with its overrides and tested, its
UAR/WAR those of its test predictions; each variant compared with GRACE by the rule written before any run; a run in a
worker process equals one in this process, and a rerun retrains or retests only what is missing. The other text
modes: tests/test_demo_modes.py."""

import argparse
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from grace_fast.demo import (
    DEFAULT_MODES,
    DEFAULT_VARIANTS,
    FULL_SEEDS,
    MODES,
    VARIANTS,
    add_arguments,
    demo,
    plan,
    table,
    verdict,
)
from grace_fast.model.config import GraceConfig
from grace_fast.train.config import TrainConfig

CLIPS, EPOCHS = 70, 1  # fold 1 tests 14 clips; the training fold gives 3 steps of 16 per epoch
SEEDS, RUN_VARIANTS, RUN_MODES = (0, 1), ("GRACE", "cosine"), ("caption",)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("demo")
    summary = demo(
        out, clips=CLIPS, epochs=EPOCHS, seeds=SEEDS, variants=RUN_VARIANTS, modes=RUN_MODES, jobs=2, progress=False
    )
    torch.set_num_threads(threads)
    return out, summary


def recalls_by_hand(path: Path) -> tuple[float, float]:
    """(UAR, WAR) of a predictions.csv: the mean recall over the classes present, and the accuracy."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    classes = sorted({row["label"] for row in rows})
    recall = [
        sum(r["prediction"] == c for r in rows if r["label"] == c) / sum(r["label"] == c for r in rows) for c in classes
    ]
    return sum(recall) / len(recall), sum(r["prediction"] == r["label"] for r in rows) / len(rows)


def test_a_clear_difference_over_three_seeds_is_real():
    result = verdict([0.05, 0.06, 0.055])
    assert result["verdict"] == "real"
    assert result["mean"] == pytest.approx(0.055)
    assert result["se"] == pytest.approx(statistics.stdev([0.05, 0.06, 0.055]) / math.sqrt(3))
    assert verdict([-0.05, -0.06, -0.055])["verdict"] == "real"  # worse than GRACE is a real difference too


def test_a_noisy_difference_is_not_shown():
    # mean 0.02, std 0.1: |mean| < 2 std / sqrt(3)
    assert verdict([0.12, -0.08, 0.02])["verdict"] == "not shown"


def test_the_rule_sits_on_twice_the_standard_error():
    # four differences at mean 0.1: a spread of 0.01 is real, one of 0.1 (2 se = 0.115 > 0.1) is not
    assert verdict([0.09, 0.11, 0.09, 0.11])["verdict"] == "real"  # mean 0.1, se 0.00577
    assert verdict([0.0, 0.2, 0.0, 0.2])["verdict"] == "not shown"  # mean 0.1, se 0.0577: 2 se = 0.115


def test_fewer_than_three_seeds_are_never_real():
    assert verdict([0.3, 0.31])["verdict"] == "not shown"
    assert verdict([0.3]) == {"n": 1, "mean": 0.3, "std": None, "se": None, "verdict": "not shown"}


def test_the_table_prints_the_mean_alone_for_one_seed_and_the_spread_for_more():
    variants = [
        dict(name="GRACE", mode="caption", n=1, uar_mean=0.25, uar_std=None, war_mean=0.5, war_std=None),
        dict(name="cosine", mode="cate", n=3, uar_mean=0.2, uar_std=0.05, war_mean=0.4, war_std=0.1),
    ]
    names = {"name": "cosine", "mode": "cate", "baseline": "GRACE", "baseline_mode": "cate"}
    comparison = {**names, **verdict([-0.05, -0.06, -0.04])}
    printed = table({"variants": variants, "rule": "the rule", "comparisons": [comparison]}).splitlines()
    assert printed[2:] == [
        "| GRACE | caption | 1 | 25.0 | 50.0 |",
        "| cosine | cate | 3 | 20.0 +- 5.0 | 40.0 +- 10.0 |",
        "rule: the rule",
        "cosine cate - GRACE cate: UAR -5.0 points, SE 0.6, n = 3: real",
    ]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_the_arguments_default_to_seed_0_and_the_default_variants_and_modes():
    defaults = list(DEFAULT_VARIANTS), list(DEFAULT_MODES)
    assert plan(parse()) == ([0], *defaults)
    chosen = parse("--seeds", "3", "4", "--variants", "GRACE", "ot_balanced", "--modes", "prompts")
    assert plan(chosen) == ([3, 4], ["GRACE", "ot_balanced"], ["prompts"])
    assert plan(parse("--seed", "5")) == ([5], *defaults)  # the old single-seed spelling


def test_full_runs_every_variant_in_every_mode_over_three_seeds_and_refuses_a_subset():
    assert plan(parse("--full")) == (list(FULL_SEEDS), list(VARIANTS), list(MODES))
    assert len(FULL_SEEDS) >= 3
    for subset in (("--seeds", "0"), ("--modes", "caption")):
        with pytest.raises(ValueError, match="--full"):
            plan(parse("--full", *subset))


def test_an_unknown_variant_or_mode_is_refused_naming_it(tmp_path):
    with pytest.raises(SystemExit):
        parse("--variants", "GRACE", "nonsense")
    with pytest.raises(SystemExit):
        parse("--modes", "caption", "nonsense")
    with pytest.raises(ValueError, match="variants .* got nonsense"):
        demo(tmp_path / "demo", variants=["nonsense"])
    with pytest.raises(ValueError, match="modes .* got llm"):
        demo(tmp_path / "demo", modes=["caption", "llm"])
    assert not (tmp_path / "demo").exists()


def test_each_variant_and_seed_trains_its_overrides_and_reports_its_test_predictions(demo_run):
    out, summary = demo_run
    runs = [(row["name"], row["mode"], row["seed"]) for row in summary["runs"]]
    assert runs == [(n, "caption", s) for s in SEEDS for n in RUN_VARIANTS]
    for row in summary["runs"]:
        run = Path(row["run"])
        assert run == out / f"seed-{row['seed']}" / "runs" / row["name"]
        config = TrainConfig.load(run / "config.yaml")
        assert (config.model_overrides, config.seed) == (VARIANTS[row["name"]], row["seed"])
        assert (config.text, config.descriptions) == ("caption", None)
        assert config.data_root == str(out / f"seed-{row['seed']}" / "data")
        model = GraceConfig.load(run / "best" / "config.json")
        assert model.lambdas == (1.0, 0.1, 0.5)  # demo_config's loss weights
        assert (model.motion, model.alignment) == (
            VARIANTS[row["name"]].get("motion", "both"),
            VARIANTS[row["name"]].get("alignment", "ot"),
        )
        with open(run / "test" / "predictions.csv") as f:
            assert sum(1 for _ in f) - 1 == CLIPS // 5
        assert (row["uar"], row["war"]) == pytest.approx(recalls_by_hand(run / "test" / "predictions.csv"))
    assert (out / "demo.png").is_file()


def test_each_seed_makes_its_own_synthetic_set(demo_run):
    out, _ = demo_run
    captions = [(out / f"seed-{seed}" / "data" / "captions.csv").read_text() for seed in SEEDS]
    assert captions[0] != captions[1]


def test_the_summary_holds_the_spread_and_the_paired_verdict_of_each_variant(demo_run):
    out, summary = demo_run
    uar = {(row["name"], row["seed"]): row["uar"] for row in summary["runs"]}
    war = {(row["name"], row["seed"]): row["war"] for row in summary["runs"]}
    for variant in summary["variants"]:
        uars, wars = [uar[variant["name"], s] for s in SEEDS], [war[variant["name"], s] for s in SEEDS]
        assert variant["n"] == len(SEEDS)
        assert (variant["uar_mean"], variant["uar_std"]) == pytest.approx(
            (statistics.mean(uars), statistics.stdev(uars))
        )
        assert (variant["war_mean"], variant["war_std"]) == pytest.approx(
            (statistics.mean(wars), statistics.stdev(wars))
        )
    (comparison,) = summary["comparisons"]
    names = ("cosine", "caption", "GRACE", "caption")
    assert tuple(comparison[k] for k in ("name", "mode", "baseline", "baseline_mode")) == names
    assert comparison["seeds"] == list(SEEDS)
    assert comparison["differences"] == pytest.approx([uar["cosine", s] - uar["GRACE", s] for s in SEEDS])
    assert comparison["verdict"] == "not shown"  # two seeds never suffice
    assert json.loads((out / "demo.json").read_text()) == json.loads(json.dumps(summary))
    printed = table(summary)
    assert f"| cosine | caption | 2 | {100 * summary['variants'][1]['uar_mean']:.1f} +- " in printed
    assert "cosine caption - GRACE caption: UAR " in printed and printed.endswith("n = 2: not shown")


def test_the_tokenizer_has_one_token_per_word_of_the_training_captions(demo_run):
    out, _ = demo_run
    folder = out / "seed-1"
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    with open(folder / "data" / "captions.csv") as f:
        captions = {row["clip"]: row["caption"] for row in csv.DictReader(f)}
    with open(folder / "data" / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv") as f:
        train = [captions[row["video_name"]] for row in csv.DictReader(f)]
    for caption in train:
        words = caption.lower().replace(",", " ,").replace(".", " .").split()
        assert len(tokenizer(caption, add_special_tokens=False).input_ids) == len(words), caption


def test_a_rerun_redoes_only_what_is_missing_the_same_in_this_process_as_in_a_worker(demo_run):
    out, summary = demo_run
    rows = {(row["name"], row["seed"]): row for row in summary["runs"]}
    retrained, retested = Path(rows["cosine", 1]["run"]), Path(rows["GRACE", 0]["run"])
    weights = load_file(retrained / "best" / "model.safetensors")
    kept = {
        key: (Path(row["run"]) / "best" / "model.safetensors").stat().st_mtime_ns
        for key, row in rows.items()
        if key != ("cosine", 1)
    }
    shutil.rmtree(retrained)
    shutil.rmtree(retested / "test")
    (out / "demo.json").unlink()

    again = demo(
        out, clips=CLIPS, epochs=EPOCHS, seeds=SEEDS, variants=RUN_VARIANTS, modes=RUN_MODES, jobs=1, progress=False
    )

    again_weights = load_file(retrained / "best" / "model.safetensors")
    # the same training in another process: bit for bit in most runs, but one run in CI's neighbourhood differed in
    # the last bits (cause not yet found), so the test allows float32 rounding
    assert again_weights.keys() == weights.keys()
    assert all(torch.allclose(again_weights[k], weights[k], rtol=1e-4, atol=1e-6) for k in weights)
    assert {key: (Path(rows[key]["run"]) / "best" / "model.safetensors").stat().st_mtime_ns for key in kept} == kept
    fields = ("name", "seed", "uar", "war", "best_epoch")
    assert [{k: r[k] for k in fields} for r in again["runs"]] == [{k: r[k] for k in fields} for r in summary["runs"]]
    assert (retested / "test" / "report.json").is_file()


def test_the_command_refuses_a_bad_jobs_count_with_exit_2_naming_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "grace_fast", "demo", "--out", str(tmp_path / "demo"), "--jobs", "0"],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert "demo: error: jobs must be an integer >= 1, got 0" in done.stderr
    assert not (tmp_path / "demo").exists()


def test_the_demo_measures_graces_mechanism_on_every_test_clip(demo_run):
    out, summary = demo_run
    assert summary["mechanism"]["measured"] == 14
    assert sorted(summary["mechanism"]["pointing"]) == ["ot", "ot_balanced"]


def test_demo_png_draws_the_scores_and_each_mechanism_metric_against_its_reference(demo_run, monkeypatch):
    """The bottom panels of demo.png: one bar per weighting / alignment and text at the metric (in %), one dash at the
    reference it is read against."""
    from grace_fast import demo as module

    _, summary = demo_run
    figures = []
    monkeypatch.setattr(module, "write_figure", lambda fig, path: figures.append(fig))
    module._plot(summary, Path("unused.png"))
    scores, motion, pointing = figures[0].axes
    mechanism = summary["mechanism"]
    assert len(scores.patches) == 2 * len(summary["variants"])
    weights = mechanism["motion"].values()
    bars = [p.get_height() for p in motion.patches]
    assert bars == pytest.approx([100 * w[key] for key in ("au", "nuisance") for w in weights], nan_ok=True)
    dashes = [y for points in motion.collections for _, y in points.get_offsets()]
    assert dashes == pytest.approx([100 * w[key] for key in ("au_area", "nuisance_area") for w in weights])
    cases = [texts[text] for texts in mechanism["pointing"].values() for text in texts]
    bars = [p.get_height() for p in pointing.patches]
    assert bars == pytest.approx([100 * c[key] for key in ("rows", "q") for c in cases], nan_ok=True)
