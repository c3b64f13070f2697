"""One error style for every command: each sub-command through a table of user errors (a missing file, a corrupt
file, a bad value) exits 2 with one line on stderr naming what to fix and no traceback; bugs keep theirs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import grace_fast
from grace_fast import __version__
from grace_fast.cli import COMMANDS, main
from grace_fast.model import GraceModel
from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config
from grace_fast.train.task import GraceClassifier

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder of inputs: a tiny GRACE checkpoint and a copy with truncated weights, a file where a folder goes,
    and corrupt captions, coarse labels, lexicon, config and synthetic-set manifest."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    GraceClassifier(GraceModel(tiny_config(build_tiny_tokenizer(root / "tokenizer")))).save_pretrained(
        root / "checkpoint"
    )
    (root / "corrupt").mkdir()
    for path in (root / "checkpoint").iterdir():
        (root / "corrupt" / path.name).write_bytes(path.read_bytes())
    weights = root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (root / "a-file").write_text("not a folder")
    (root / "captions.jsonl").write_text('{"clip": "01", "caption": "a smile"}\n{"clip": "02", "caption": \n')
    (root / "coarse_labels.jsonl").write_text(json.dumps({"clip": "01", "labels": ["happiness"]}) + "\n")
    (root / "lexicon.json").write_text('{"version": 1, "datasets": ')
    (root / "run.yaml").write_text("epochs: [1\n")
    for manifest in (root / "made" / "synthetic.json", root / "demo-made" / "seed-0" / "data" / "synthetic.json"):
        manifest.parent.mkdir(parents=True)
        manifest.write_text("{not json")
    (root / "videos").mkdir()
    (root / "bad-videos").mkdir()
    (root / "bad-videos" / "broken.mp4").write_text("not a video")
    return root


def checkpoint_args(files: Path, folder: str) -> list[str]:
    return ["--checkpoint", str(files / folder)]


# (command, case) -> (arguments given the inputs folder, what the error line must name[, marks])
CASES = {
    ("caption", "missing"): (lambda f: ["--import", str(f / "none.csv"), "--out", str(f / "o.jsonl")], "none.csv"),
    ("caption", "corrupt"): (lambda f: ["--import", str(f / "captions.jsonl"), "--out", str(f / "o.jsonl")], "line 2"),
    ("caption", "bad-value"): (
        lambda f: ["--videos", str(f / "videos"), "--model", str(f), "--out", str(f / "o.jsonl"), "--frames", "0"],
        "--frames",
    ),
    ("crop-faces", "missing"): (lambda f: ["--videos", str(f / "none"), "--out", str(f / "faces")], "none"),
    ("crop-faces", "corrupt"): (
        lambda f: ["--videos", str(f / "bad-videos"), "--out", str(f / "faces"), "--quiet"],
        "broken.mp4",
    ),
    ("crop-faces", "bad-value"): (
        lambda f: ["--videos", str(f / "videos"), "--out", str(f / "faces"), "--size", "0"],
        "--size",
    ),
    ("demo", "missing"): (lambda f: ["--out", str(f / "a-file" / "demo"), "--clips", "35"], "a-file"),
    ("demo", "corrupt"): (
        lambda f: ["--out", str(f / "demo-made"), "--clips", "35"],
        "synthetic.json",
    ),
    ("demo", "bad-value"): (lambda f: ["--out", str(f / "demo"), "--jobs", "0"], "jobs"),
    ("coarse-labels", "missing"): (
        lambda f: ["--videos", str(f / "none"), "--dataset", "dfew", "--classifier", "m:f", "--out", str(f / "l")],
        "none",
    ),
    ("coarse-labels", "corrupt"): (
        lambda f: (
            ["--videos", str(f / "videos"), "--dataset", "dfew", "--classifier", "m:f", "--out", str(f / "l")]
            + ["--lexicon", str(f / "lexicon.json")]
        ),
        "lexicon.json",
    ),
    ("coarse-labels", "bad-value"): (
        lambda f: (
            ["--videos", str(f / "videos"), "--dataset", "dfew", "--classifier", "m:f", "--out", str(f / "l")]
            + ["--k", "0"]
        ),
        "--k",
    ),
    ("evaluate", "missing"): (
        lambda f: ["--predictions", str(f / "none.csv"), "--classes", "a,b", "--out", str(f / "e")],
        "none.csv",
    ),
    ("evaluate", "corrupt"): (
        lambda f: [*checkpoint_args(f, "corrupt"), "--data-root", str(f), "--out", str(f / "e"), "--device", "cpu"],
        "model.safetensors",
    ),
    ("evaluate", "bad-value"): (
        lambda f: [*checkpoint_args(f, "checkpoint"), "--out", str(f / "e"), "--batch-size", "0"],
        "--batch-size",
    ),
    ("explain", "missing"): (lambda f: ["clip.mp4", *checkpoint_args(f, "none")], "none"),
    ("explain", "corrupt"): (lambda f: ["clip.mp4", *checkpoint_args(f, "corrupt")], "model.safetensors"),
    ("explain", "bad-value"): (lambda f: ["clip.mp4", *checkpoint_args(f, "checkpoint"), "--top-k", "-1"], "--top-k"),
    ("make-synthetic", "missing"): (lambda f: ["--out", str(f / "a-file" / "set"), "--clips", "35"], "a-file"),
    ("make-synthetic", "corrupt"): (
        lambda f: ["--out", str(f / "made"), "--clips", "35"],
        "synthetic.json",
    ),
    ("make-synthetic", "bad-value"): (lambda f: ["--out", str(f / "set"), "--size", "31"], "size"),
    ("predict", "missing"): (lambda f: ["clip.mp4", *checkpoint_args(f, "none")], "none"),
    ("predict", "corrupt"): (lambda f: ["clip.mp4", *checkpoint_args(f, "corrupt")], "model.safetensors"),
    ("predict", "bad-value"): (lambda f: ["clip.mp4", *checkpoint_args(f, "checkpoint"), "--top-k", "0"], "--top-k"),
    ("pretrain", "missing"): (lambda f: ["--data-root", str(f / "none"), "--out", str(f / "run")], "none"),
    ("pretrain", "corrupt"): (lambda f: ["--config", str(f / "run.yaml"), "--out", str(f / "run")], "run.yaml"),
    ("pretrain", "bad-value"): (lambda f: ["--data-root", str(f), "--mask-ratio", "1.5"], "mask_ratio"),
    ("refine", "missing"): (
        lambda f: ["--captions", str(f / "captions.jsonl"), "--labels", str(f / "none.jsonl"), "--out", str(f / "r")],
        "none.jsonl",
    ),
    ("refine", "corrupt"): (
        lambda f: ["--captions", str(f / "captions.jsonl"), "--out", str(f / "r.jsonl"), "--template"],
        "captions.jsonl line 2",
    ),
    ("refine", "bad-value"): (
        lambda f: ["--captions", str(f / "captions.jsonl"), "--out", str(f / "r"), "--timeout", "0"],
        "--timeout",
    ),
    ("train", "missing"): (lambda f: ["--data-root", str(f / "none"), "--out", str(f / "run")], "none"),
    ("train", "corrupt"): (lambda f: ["--config", str(f / "run.yaml"), "--out", str(f / "run")], "run.yaml"),
    ("train", "bad-value"): (lambda f: ["--data-root", str(f), "--epochs", "0"], "epochs"),
}


PARAMS = [
    pytest.param(command, arguments, names, marks=marks, id=f"{command}-{case}")
    for (command, case), (arguments, names, *marks) in CASES.items()
]


def test_the_table_covers_every_command_with_each_kind_of_user_error():
    assert {command for command, _ in CASES} == set(COMMANDS)
    assert {case for _, case in CASES} == {"missing", "corrupt", "bad-value"} and len(CASES) == 3 * len(COMMANDS)


@pytest.mark.parametrize("command, arguments, names", PARAMS)
def test_a_user_error_is_one_line_on_stderr_and_exit_2(files, capsys, command, arguments, names):
    code = main([command, *arguments(files)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    (line,) = err.splitlines()
    assert code == 2 and line.startswith(f"grace-fast {command}: error: ") and names in line


CHECKPOINT_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_any_corrupt_file_of_a_checkpoint_is_a_user_error_naming_it(files, tmp_path, capsys, name):
    folder = tmp_path / "checkpoint"
    shutil.copytree(files / "checkpoint", folder)
    assert sorted(path.name for path in folder.iterdir()) == sorted([*CHECKPOINT_FILES, "README.md"])  # + the card
    (folder / name).write_text("{garbage")
    assert main(["predict", "clip.mp4", "--checkpoint", str(folder)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("grace-fast predict: error: ") and str(folder) in line


DEVICE_COMMANDS = {  # command -> arguments besides --device that get it past argparse
    "predict": lambda f: ["clip.mp4", *checkpoint_args(f, "checkpoint")],
    "explain": lambda f: ["clip.mp4", *checkpoint_args(f, "checkpoint")],
    "evaluate": lambda f: [*checkpoint_args(f, "checkpoint"), "--data-root", str(f), "--out", str(f / "e")],
    "caption": lambda f: ["--videos", str(f / "videos"), "--model", str(f), "--out", str(f / "o.jsonl")],
    "coarse-labels": lambda f: (
        ["--videos", str(f / "videos"), "--dataset", "dfew", "--classifier", "m:f"] + ["--out", str(f / "l")]
    ),
    "train": lambda f: ["--data-root", str(f), "--out", str(f / "run")],
    "pretrain": lambda f: ["--data-root", str(f), "--out", str(f / "run")],
}


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_a_device_this_machine_lacks_is_refused_before_work_starts(files, capsys, command, device):
    assert main([command, *DEVICE_COMMANDS[command](files), "--device", device]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"grace-fast {command}: error: ") and repr(device) in line
    assert not (files / "run").exists()


class Calls(torch.utils.data.Dataset):
    """Item i is function(*args): a data set whose reading raises what function raises."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        return self.function(*self.args)


def in_process_pool(function, *args):
    def run(_):
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1) as pool:
            return pool.submit(function, *args).result()

    return run


def in_data_loader(function, *args):
    def run(_):
        return next(iter(torch.utils.data.DataLoader(Calls(function, *args), num_workers=1)))

    return run


@pytest.mark.parametrize("worker", [in_process_pool, in_data_loader], ids=["process-pool", "data-loader"])
def test_a_value_error_of_a_worker_process_is_the_users_when_grace_fast_raised_it(files, monkeypatch, capsys, worker):
    from grace_fast.data.layouts import _check_choice

    monkeypatch.setattr("grace_fast.predict.run", worker(_check_choice, "fold", 6, (1, 2)))
    assert main(["predict", "a.mp4", *checkpoint_args(files, "checkpoint")]) == 2
    assert capsys.readouterr().err == "grace-fast predict: error: fold must be one of [1, 2], got 6\n"
    monkeypatch.setattr("grace_fast.predict.run", worker(int, "x"))
    with pytest.raises(ValueError, match="invalid literal"):
        main(["predict", "a.mp4", *checkpoint_args(files, "checkpoint")])


@pytest.mark.parametrize("debug", [["--debug", "predict"], ["predict", "--debug"]], ids=["before", "after"])
def test_debug_shows_the_traceback_of_a_user_error(files, debug):
    with pytest.raises(FileNotFoundError, match="is not a GRACE checkpoint"):
        main([*debug, "clip.mp4", *checkpoint_args(files, "none")])


def package_function(source: str):
    """run(args) compiled as code of the grace_fast package (its file name), from source of its body."""
    namespace = {"np": np}
    body = "".join(f"    {line}\n" for line in source.splitlines())
    exec(compile(f"def run(args):\n{body}", str(Path(grace_fast.__file__).with_name("bug.py")), "exec"), namespace)
    return namespace["run"]


BUGS = {  # a ValueError in grace_fast's code that no `raise` statement raised
    "failed-unpacking": "(only,) = args.clips",
    "library-raises": "np.zeros(2).reshape(3)",
    "strict-zip": "list(zip(args.clips, [1], strict=True))",
}


@pytest.mark.parametrize("source", BUGS.values(), ids=BUGS.keys())
def test_a_value_error_not_raised_by_a_check_is_a_bug_and_keeps_its_traceback(files, monkeypatch, source):
    monkeypatch.setattr("grace_fast.predict.run", package_function(source))
    with pytest.raises(ValueError):
        main(["predict", "a.mp4", "b.mp4", *checkpoint_args(files, "checkpoint")])


def test_a_value_error_raised_by_a_check_is_the_users(files, monkeypatch, capsys):
    monkeypatch.setattr("grace_fast.predict.run", package_function("raise ValueError(f'{len(args.clips)} clips')"))
    assert main(["predict", "a.mp4", "b.mp4", *checkpoint_args(files, "checkpoint")]) == 2
    assert capsys.readouterr().err == "grace-fast predict: error: 2 clips\n"
    monkeypatch.undo()
    assert main(["predict", "a.mp4", "--caption", "x", "--caption", "y", *checkpoint_args(files, "checkpoint")]) == 2
    assert (
        capsys.readouterr().err
        == "grace-fast predict: error: --caption: given 2 times for 1 clips; give one per clip\n"
    )


def test_the_exit_codes_reach_the_shell(files):
    def grace_fast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "grace_fast", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )

    done = grace_fast("predict", "clip.mp4", *checkpoint_args(files, "corrupt"))
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith("grace-fast predict: error: checkpoint file ") and done.stderr.count("\n") == 1
    done = grace_fast("--version")
    assert (done.returncode, done.stdout) == (0, f"grace-fast {__version__}\n")
    done = grace_fast("nonsense")
    assert done.returncode == 2 and done.stderr.startswith("grace-fast: error: argument COMMAND: invalid choice")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "command",
    ["train", "pretrain", "evaluate", "caption", "coarse-labels", "refine", "make-synthetic", "demo", "crop-faces"],
)
def test_every_long_command_has_quiet(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--quiet" in capsys.readouterr().out
