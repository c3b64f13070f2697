"""build_tiny_tokenizer: the same folder and ids in every process, CLIP's id layout, and its BPE merges."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from grace_fast.model.tiny import CORPUS, bpe_merges

REPO = Path(__file__).resolve().parents[2]
TEXT = "A face showing happiness: cheeks raised (AU6). Déjà vu, 123!"
BUILD = """
import json, sys
from transformers import AutoTokenizer
from grace_fast.model.tiny import build_tiny_tokenizer
folder = build_tiny_tokenizer(sys.argv[1])
print(json.dumps(AutoTokenizer.from_pretrained(folder)(sys.argv[2]).input_ids))
"""


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_tokenizer_folder_and_ids_are_the_same_in_every_process(tokenizer_folder, tmp_path):
    built = {}
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        folder = tmp_path / f"hash-seed-{hash_seed}"
        done = subprocess.run(
            [sys.executable, "-c", BUILD, str(folder), TEXT], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        built[hash_seed] = files(folder), json.loads(done.stdout)
    ids = AutoTokenizer.from_pretrained(tokenizer_folder)(TEXT).input_ids
    assert built["1"] == built["2"] == (files(tokenizer_folder), ids)
    assert set(built["1"][0]) == {"tokenizer.json", "tokenizer_config.json"}


def test_tokenizer_has_clips_special_ids_every_byte_and_a_token_per_corpus_word(tokenizer_folder):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)) == (0, 1, 1, 747)
    words = {word for text in CORPUS for word in re.findall(r"[a-z]+", text.lower())}
    assert all(len(tokenizer(word, add_special_tokens=False).input_ids) == 1 for word in words)  # all merges learnt
    ids = tokenizer(TEXT).input_ids
    assert ids[0] == 0 and ids[-1] == 1 and 1 not in ids[1:-1]  # no unknown token: every byte is in the vocabulary
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == "a face showing happiness : cheeks raised ( au 6 ). déjà vu , 1 2 3 !"
    )


@pytest.mark.parametrize(
    "words, count, merges",
    [
        pytest.param(
            {"aaab": 1}, 3, [("a", "a"), ("a", "b</w>"), ("aa", "ab</w>")], id="left-to-right-then-text-order"
        ),
        pytest.param({"cd": 1, "ab": 1}, 5, [("a", "b</w>"), ("c", "d</w>")], id="ties-by-text-not-insertion"),
        pytest.param({"cd": 3, "ab": 2}, 1, [("c", "d</w>")], id="most-frequent-first-up-to-count"),
        pytest.param({"xyxy": 1, "yx": 2}, 2, [("y", "x</w>"), ("x", "y")], id="frequency-summed-over-words"),
        pytest.param({"a": 4}, 3, [], id="nothing-to-merge"),
    ],
)
def test_bpe_merges_take_the_most_frequent_pair_and_break_ties_by_text(words, count, merges):
    assert bpe_merges(words, count) == merges
