"""`grace-fast pretrain` on a tiny synthetic set: tube masks, the encoder folder GRACE loads, exact resumption after
a real SIGKILL, and DDP on 2 gloo processes against one process with accumulation."""

import json
import sys
from pathlib import Path

import pytest
import torch

from grace_fast.data.synthetic import make_synthetic
from grace_fast.files import read_safetensors
from grace_fast.train.checkpoint import MODEL_NAME, checkpoints
from grace_fast.train.pretrain import MaskedClips, PretrainConfig, pretrain, pretrain_clips, tube_mask
from tests.train.conftest import kill_at, run_ok

FRAMES = 4  # 2 tubelets of 4 x 4 patches: 32 tokens, 2 visible per tubelet at ratio 0.9


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return Path(make_synthetic(tmp_path_factory.mktemp("synthetic"), clips=24, seed=0, size=32, progress=False)["out"])


def options(data: Path, run: Path, **changes) -> dict:
    values = dict(
        dataset="synthetic",
        data_root=str(data),
        model_overrides={"num_frames": FRAMES},
        epochs=2,
        batch_size=4,
        lr=1e-3,
        warmup_steps=1,
        checkpoint_every=2,
        amp="off",  # bit-for-bit comparisons: no bf16 autocast on a bf16 CPU
        progress=False,
        out=str(run),
    )
    return {**values, **changes}


def command(data: Path, run: Path, *args: str, torchrun: bool = False) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    flags = ["--data-root", str(data), "--out", str(run), "--set", f"model_overrides.num_frames={FRAMES}"]
    flags += ["--epochs", "2", "--lr", "1e-3", "--warmup-steps", "1", "--checkpoint-every", "2", "--amp", "off"]
    return [*(launcher if torchrun else [sys.executable]), "-m", "grace_fast", "pretrain", *flags, "--quiet", *args]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(checkpoints(run)[-1] / MODEL_NAME)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    result = pretrain(PretrainConfig(**options(data, run)))
    return result, run


def test_tube_mask_hides_the_same_share_of_positions_in_every_tubelet():
    mask = tube_mask((3, 4, 5), 0.9, torch.Generator().manual_seed(0)).view(3, 20)
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [18, 18, 18]
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])
    other = tube_mask((3, 4, 5), 0.9, torch.Generator().manual_seed(1)).view(3, 20)
    assert not torch.equal(mask[0], other[0])


def test_mask_ratio_that_hides_nothing_or_everything_is_refused():
    with pytest.raises(ValueError, match="mask_ratio 0.05 hides 0 of the 16 patches"):
        tube_mask((2, 4, 4), 0.05, torch.Generator())
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\), got 1.0"):
        PretrainConfig(mask_ratio=1.0)


def test_fields_of_supervised_training_are_refused():
    with pytest.raises(ValueError, match="text: not used by pretraining"):
        PretrainConfig(text="prompts")


def test_a_folder_of_videos_gives_every_clip_in_it_unlabelled(data):
    clips = pretrain_clips(PretrainConfig(videos=str(data / "Clip")))
    assert sorted(clip.id for clip in clips) == sorted(f"original/{i}" for i in range(1, 25))
    assert clips.classes == ("unlabelled",) and {clip.label for clip in clips} == {0}
    training_fold = pretrain_clips(PretrainConfig(data_root=str(data)))
    assert 0 < len(training_fold) < 24  # the training split: the test fold's clips are left out


def test_masks_depend_on_seed_epoch_and_clip_only(data):
    from grace_fast.data.datasets import ClipDataset
    from grace_fast.data.transforms import VideoTransform

    clips = ClipDataset(
        pretrain_clips(PretrainConfig(data_root=str(data))), num_frames=FRAMES, transform=VideoTransform(32)
    )
    dataset = MaskedClips(clips, (2, 4, 4), 0.9, seed=0)
    first = [dataset[i][1] for i in range(3)]
    assert all(torch.equal(a, dataset[i][1]) for i, a in enumerate(first))  # read again: the same
    assert not torch.equal(first[0], first[1])
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i][1]) for i, a in enumerate(first))


def test_pretraining_lowers_the_reconstruction_loss_and_writes_the_encoder(uninterrupted):
    result, run = uninterrupted
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[1]["train_total"] < lines[0]["train_total"]
    assert result.best_checkpoint == run / "best"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in run.glob("best/*")}


def test_grace_model_built_from_the_folder_gets_the_pretrained_encoder_weights(uninterrupted, tmp_path):
    from grace_fast.model import GraceModel
    from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config

    _, run = uninterrupted
    trained = {
        name.removeprefix("model.videomae."): tensor
        for name, tensor in final_weights(run).items()
        if name.startswith("model.videomae.")
    }
    config = tiny_config(build_tiny_tokenizer(tmp_path), frames=8, video_pretrained=str(run / "best"))
    encoder = GraceModel(config).video.model.state_dict()  # 8 frames: the position table follows the clip length
    assert encoder.keys() == trained.keys()
    for name, tensor in trained.items():
        assert torch.equal(encoder[name], tensor), name
    torch.manual_seed(0)
    random = GraceModel(config.replace(video_pretrained=None)).video.model.state_dict()
    assert not torch.equal(
        random["embeddings.patch_embeddings.projection.weight"],
        trained["embeddings.patch_embeddings.projection.weight"],
    )


def test_a_run_continued_from_the_encoder_folder_starts_from_its_weights(uninterrupted):
    from grace_fast.train.pretrain import build_autoencoder

    _, run = uninterrupted
    model = build_autoencoder(PretrainConfig(model=str(run / "best"), model_overrides={"num_frames": FRAMES}))
    encoder = read_safetensors(run / "best" / "model.safetensors")
    assert all(torch.equal(model.encoder.state_dict()[name], tensor) for name, tensor in encoder.items())
    assert not model.model.mask_token.any()  # not in the folder: VideoMAE's zeros, not uninitialised memory


# pretrain() in a subprocess, printing each step and sleeping after it so that a kill lands mid-run
PRETRAIN_SLOWLY = """
import sys, time
from pathlib import Path
from grace_fast.train.pretrain import PretrainConfig, pretrain
from tests.train.test_pretrain import options

def on_step(info):
    print("step", info["global_step"], flush=True)
    time.sleep(float(sys.argv[3]))

config = PretrainConfig(**options(Path(sys.argv[1]), Path(sys.argv[2]), resume=sys.argv[4] == "resume"))
pretrain(config, on_step=on_step)
"""


def pretrain_slowly(data: Path, run: Path, sleep: float, resume: bool) -> list[str]:
    return [sys.executable, "-c", PRETRAIN_SLOWLY, str(data), str(run), str(sleep), "resume" if resume else "new"]


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_weights_bit_for_bit(data, uninterrupted, tmp_path):
    _, reference = uninterrupted
    kill_at(pretrain_slowly(data, tmp_path, 0.3, resume=False), "step 3")  # mid epoch 1, after step 2's checkpoint
    assert checkpoints(tmp_path)[-1].name in ("step-00000002", "step-00000003")
    run_ok(pretrain_slowly(data, tmp_path, 0.0, resume=True), timeout=300)
    expected, resumed = final_weights(reference), final_weights(tmp_path)
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), f"{name} differs by {(resumed[name] - tensor).abs().max():.3g}"


def test_ddp_on_two_gloo_processes_matches_one_process_with_accumulation(data, tmp_path):
    run_ok(command(data, tmp_path / "single", "--batch-size", "2", "--accumulation", "2"), timeout=300)
    run_ok(command(data, tmp_path / "ddp", "--batch-size", "2", torchrun=True), timeout=300)
    expected, got = final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-5)


def test_the_demos_pretraining_step_gives_a_model_config_that_loads_the_encoder(data, tmp_path):
    from grace_fast.demo import demo_model, pretrained_model
    from grace_fast.model import GraceModel
    from grace_fast.model.config import GraceConfig

    path = pretrained_model(tmp_path, data, demo_model(tmp_path, data), epochs=1, seed=0, progress=False)
    config = GraceConfig.load(path)
    assert config.video_pretrained == str(tmp_path / "pretrain" / "best")
    encoder = read_safetensors(tmp_path / "pretrain" / "best" / "model.safetensors")
    loaded = GraceModel(config).video.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in encoder.items())
