"""The text encoder: the offline CLIP tokenizer folder, the content mask, and the cached class prompts."""

import pytest
import torch
from transformers import CLIPTokenizer

from grace_fast.model.text import content_mask, load_tokenizer
from tests.model.conftest import TEXTS


def test_tokenizer_folder_loads_as_a_clip_tokenizer(tokenizer_folder):
    tokenizer = load_tokenizer(tokenizer_folder)
    assert isinstance(tokenizer, CLIPTokenizer)
    ids = tokenizer("A face showing happiness!")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]  # every byte is in the vocabulary
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a face showing happiness !"


def test_missing_tokenizer_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder .*nowhere does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no CLIP tokenizer could be loaded from"):
        load_tokenizer(tmp_path)


def test_mask_keeps_exactly_the_content_tokens(make_model):
    model = make_model()
    tokens = model.text(TEXTS)
    tokenizer = model.tokenizer
    for row, text in enumerate(TEXTS):
        content = tokenizer(text, add_special_tokens=False)["input_ids"]
        kept = tokens.ids[row][tokens.mask[row]].tolist()
        if content:
            assert kept == content
        else:  # an empty text keeps its EOS, CLIP's summary token, so that every row has a valid token
            assert kept == [tokenizer.eos_token_id]
    assert tokens.embeddings.shape == (*tokens.ids.shape, model.text.hidden_size)


def test_content_mask_by_hand():
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    special = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    assert content_mask(attention, special).tolist() == [
        [False, True, True, False, False],
        [False, True, False, False, False],
    ]


def test_long_text_is_truncated_to_max_text_tokens(make_model):
    model = make_model(max_text_tokens=12)
    tokens = model.text(["brows raised " * 40])
    assert tokens.ids.shape == (1, 12) and tokens.mask.sum() == 10


def test_class_prompts_are_encoded_once_in_eval_mode(make_model):
    model = make_model()
    calls = []
    model.text.model.register_forward_hook(lambda module, args, out: calls.append(1))
    first = model.text.class_prompts()
    second = model.text.class_prompts()
    assert len(calls) == 1 and first is second
    assert first.embeddings.shape[0] == 7 and not first.embeddings.requires_grad
    torch.testing.assert_close(first.embeddings, model.text(model.config.class_prompts).embeddings)
    model.train()  # training encodes the prompts every call, with gradients
    assert model.text.class_prompts().embeddings.requires_grad and len(calls) == 3
    model.eval()
    model.text.class_prompts()
    assert len(calls) == 4  # train() dropped the cache
    model.load_state_dict(model.state_dict())
    model.text.class_prompts()
    assert len(calls) == 5  # new weights drop it too


def test_text_must_be_a_list_of_strings(make_model):
    model = make_model()
    with pytest.raises(TypeError, match="text must be a list of strings"):
        model.text("one string")
