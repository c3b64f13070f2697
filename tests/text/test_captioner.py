"""The captioner: a tiny random Video-LLaVA saved to a folder captions real mp4 clips; caption import."""

import json
import re

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
)

from grace_fast.cli import main
from grace_fast.data.video import read_video, write_mp4
from grace_fast.text.cache import Cache
from grace_fast.text.captioner import Captioner, caption_clips, import_captions
from grace_fast.text.jobs import read_jsonl

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"]
WORDS = "the person face smiles frowns looks talks brows raised mouth open eyes closed head turns".split()
PROMPT_WORDS = ["USER:", "ASSISTANT:", "describe", "video"]
PROMPT = "USER: <video>\ndescribe the face video ASSISTANT:"
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random Video-LLaVA (2-layer Llama, 2-layer CLIP on 28 px frames) with a word-level tokenizer."""
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS + PROMPT_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<image>", "<video>"],
    )
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(**vision, image_size=28, patch_size=14),
        text_config=LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=3,
            bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_index=4,
        video_token_index=5,
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = VideoLlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # loud visual features, so that different clips get different captions
        model.model.multi_modal_projector.linear_2.weight.mul_(30)
    # only words can be generated, so every caption has exactly max_new_tokens words
    model.generation_config.suppress_tokens = [vocab[t] for t in SPECIAL + PROMPT_WORDS]
    folder = tmp_path_factory.mktemp("video_llava")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    VideoLlavaImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four short mp4 clips of different moving patterns."""
    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:80]
    for i in range(4):
        phase = rng.uniform(0, 2 * np.pi, 3)
        frames = [
            np.stack([127 + 120 * np.sin(x / (4 + i) + t / 3 + p + y / 9) for p in phase], -1) for t in range(12 + i)
        ]
        write_mp4(folder / f"clip{i}.mp4", np.stack(frames).astype(np.uint8), fps=10)
    return folder


@pytest.fixture(scope="module")
def captioner(model_dir):
    return Captioner(model_dir, prompt=PROMPT, num_frames=8, max_new_tokens=NEW_TOKENS)


def test_batched_captions_equal_one_clip_at_a_time(captioner, videos):
    clips = [read_video(videos / f"clip{i}.mp4", 8) for i in range(4)]
    batched = captioner.caption(clips)
    assert batched == [captioner.caption([clip])[0] for clip in clips]
    assert len(set(batched)) > 1, batched
    for caption in batched:  # the new tokens only: no prompt, no special tokens
        assert len(caption.split()) == NEW_TOKENS and set(caption.split()) <= set(WORDS), caption


def test_captions_are_greedy_generation_from_the_frames(captioner, videos, model_dir):
    """The caption is the model's greedy continuation: recompute it by hand with argmax over the full forward."""
    frames = read_video(videos / "clip0.mp4", 8)
    expanded = PROMPT.replace("<video>", "<video>" * (captioner.tokens_per_frame * 8))
    ids = captioner.tokenizer(expanded, return_tensors="pt")["input_ids"]
    pixels = VideoLlavaImageProcessor.from_pretrained(model_dir)(
        images=list(frames), return_tensors="pt", return_legacy_image_output=False
    )["pixel_values"][None]
    suppressed = captioner.model.generation_config.suppress_tokens
    with torch.inference_mode():
        for _ in range(NEW_TOKENS):
            logits = captioner.model(input_ids=ids, pixel_values_videos=pixels).logits[0, -1]
            logits[suppressed] = -float("inf")
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    expected = captioner.tokenizer.decode(ids[0, -NEW_TOKENS:])
    assert captioner.caption([frames]) == [expected]


def test_captioner_rejects_bad_folders_prompts_and_frames(model_dir, tmp_path, captioner):
    with pytest.raises(FileNotFoundError, match="no config.json in .*nowhere"):
        Captioner(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="video token '<video>' once"):
        Captioner(model_dir, prompt="USER: describe ASSISTANT:")
    with pytest.raises(ValueError, match=r"videos\[0\] must be \[8, H, W, 3\], got shape \(4, 28, 28, 3\)"):
        captioner.caption([np.zeros((4, 28, 28, 3), np.uint8)])


def test_caption_clips_caches_and_reports_bad_videos(captioner, videos, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    clips = [(f"clip{i}", str(videos / f"clip{i}.mp4")) for i in range(3)] + [("broken", str(tmp_path / "broken.mp4"))]
    with Cache(tmp_path / "c.sqlite") as cache:
        captions, summary = caption_clips(clips, captioner, cache, batch_size=2, progress=False)
        assert (summary.done, summary.cached, list(summary.failed)) == (3, 0, ["broken"])
        assert "cannot decode video" in summary.failed["broken"] and len(cache) == 3
        again, summary = caption_clips(clips[:3], captioner, cache, batch_size=2, progress=False)
    assert (summary.done, summary.cached, summary.failed) == (0, 3, {})
    assert again == captions and captions["clip1"] == captioner.caption([read_video(clips[1][1], 8)])[0]


def test_the_cli_captions_a_folder_and_resumes_from_the_cache(model_dir, videos, tmp_path, capsys):
    args = ["caption", "--videos", str(videos), "--model", str(model_dir), "--out", str(tmp_path / "captions.jsonl")]
    args += ["--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "3", "--device", "cpu"]
    assert main(args) == 0
    first = read_jsonl(tmp_path / "captions.jsonl", "captions")
    assert [r["clip"] for r in first] == ["clip0", "clip1", "clip2", "clip3"]
    assert all(len(r["caption"].split()) == NEW_TOKENS for r in first)
    assert main(args) == 0
    assert read_jsonl(tmp_path / "captions.jsonl", "captions") == first
    out = capsys.readouterr().out
    assert "caption: 4 done, 0 cached, 0 failed" in out and "caption: 0 done, 4 cached, 0 failed" in out


@pytest.mark.parametrize("suffix", ["csv", "tsv", "json-dict", "json-list", "jsonl"])
def test_import_captions_from_each_format(tmp_path, suffix):
    rows = [("01", "A man  smiles."), ("02", "A woman, frowning.")]
    if suffix in ("csv", "tsv"):
        sep = "," if suffix == "csv" else "\t"
        text = f"name{sep}text\n" + "".join(f'{c}{sep}"{t}"\n' for c, t in rows)
    elif suffix == "json-dict":
        text = json.dumps(dict(rows))
    else:
        records = [{"name": c, "text": t} for c, t in rows]
        text = json.dumps(records) if suffix == "json-list" else "".join(json.dumps(r) + "\n" for r in records)
    path = tmp_path / f"captions.{suffix.split('-')[0]}"
    path.write_text(text)
    fields = {} if suffix == "json-dict" else {"id_field": "name", "caption_field": "text"}
    assert import_captions(path, **fields) == {"01": "A man smiles.", "02": "A woman, frowning."}


def test_import_captions_names_missing_fields_and_duplicates(tmp_path):
    (tmp_path / "c.csv").write_text("clip,english\n01,x\n")
    with pytest.raises(
        ValueError, match=r"c.csv: the header names no 'caption' column \(found \['clip', 'english'\]\)"
    ):
        import_captions(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("clip,caption\n01,x\n01,y\n")
    with pytest.raises(ValueError, match="clip '01' occurs twice"):
        import_captions(tmp_path / "d.csv")


BAD_IMPORTS = {  # file name -> (content, what the error says)
    "no-field.jsonl": ('{"clip": "01", "caption": "x"}\n{"clip": "02"}\n', "line 2: clip '02' has no 'caption'"),
    "null.jsonl": ('{"clip": "01", "caption": null}\n', "line 1: clip '01' has no 'caption' (null)"),
    "number.json": ('{"01": 5}', "record 1: clip '01': 'caption' must be text, got 5"),
    "empty.csv": ("clip,caption\n01,x\n02,  \n", "line 3: clip '02' has an empty 'caption'"),
    "short-row.csv": ("clip,caption\n01,x\n02\n", "line 3 has 1 fields, the header 2"),
    "long-row.csv": ("clip,caption\n01,A man, smiling\n", "line 2 has 3 fields, the header 2"),
    "open-quote-at-end.csv": ('clip,caption\n01,"A man smiles\n02,A woman frowns\n', "the quote opened on line 2"),
    "open-quote.csv": ('clip,caption\n01,"A man smiles\n02,A woman "frowns"\n', "the quote opened on line 2"),
    "bad-line.jsonl": ('{"clip": "01", "caption": "x"}\n{"clip": "02", \n', "line 2 is not JSON"),
    "bad.json": ('{"01": "x",}', "is not JSON"),
}


@pytest.mark.parametrize("name", BAD_IMPORTS)
def test_import_captions_refuses_a_record_without_a_caption_naming_its_line(tmp_path, name):
    content, message = BAD_IMPORTS[name]
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"captions file {tmp_path / name}")) as error:
        import_captions(tmp_path / name)
    assert message in str(error.value)


def test_the_cli_imports_captions(tmp_path, capsys):
    (tmp_path / "mafw.csv").write_text("video,english\n00025,A man smiles.\n00003,A girl cries.\n")
    args = ["caption", "--import", str(tmp_path / "mafw.csv"), "--out", str(tmp_path / "captions.jsonl")]
    assert main([*args, "--id-field", "video", "--caption-field", "english"]) == 0
    assert read_jsonl(tmp_path / "captions.jsonl", "captions") == [
        {"clip": "00003", "caption": "A girl cries."},
        {"clip": "00025", "caption": "A man smiles."},
    ]
    assert "caption: 2 done" in capsys.readouterr().out
