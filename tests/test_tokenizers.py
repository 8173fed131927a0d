"""Both tokenizers: the shared chat template and its single-id chat tokens, the char tokenizer's Unicode and
<unk> handling, GPT-2's BPE with chat tokens on a resized model, and save/load through AutoTokenizer."""

import jinja2
import pytest
import torch
from transformers import AutoTokenizer

from tinygpt import SPECIAL_TOKENS, TinyGPTCharTokenizer, TinyGPTConfig, TinyGPTForCausalLM, load_gpt2_chat_tokenizer

CORPUS = "Hello, world! héllo 世界 🙂 Who are you?\nBe brief.\n"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "Hello, world!"},
    {"role": "user", "content": "世界 🙂"},
]
RENDERED = "<BOS>Be brief.<EOS><user>:Who are you?<EOS><assistant>:Hello, world!<EOS><user>:世界 🙂<EOS>"


@pytest.fixture(scope="module")
def char_tokenizer():
    return TinyGPTCharTokenizer.from_corpus(CORPUS)


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared_data):
    return load_gpt2_chat_tokenizer(shared_data / "gpt2")


@pytest.fixture(params=["char_tokenizer", "gpt2_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------------------------
# Chat template, both tokenizers


def test_chat_template_renders_system_user_and_assistant_turns(tokenizer):
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == RENDERED
    with_prompt = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert with_prompt == RENDERED + "<assistant>:"


def test_each_chat_token_is_a_single_id(tokenizer):
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(token)
        assert ids == [tokenizer.convert_tokens_to_ids(token)], token
        assert tokenizer.decode(ids) == token
    ids = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]
    bos, eos, user, assistant = tokenizer.convert_tokens_to_ids(["<BOS>", "<EOS>", "<user>:", "<assistant>:"])
    assert ids[0] == bos and ids[-1] == assistant
    assert ids.count(eos) == 4 and ids.count(user) == 2 and ids.count(assistant) == 2
    assert tokenizer.decode(ids) == RENDERED + "<assistant>:"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Be brief.Who are you?Hello, world!世界 🙂"


def test_chat_template_rejects_an_unknown_role(tokenizer):
    with pytest.raises(jinja2.TemplateError, match="unknown chat role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_decode_encode_round_trips_unicode(tokenizer):
    text = "héllo 世界 🙂<user>:Who are you?"
    assert tokenizer.decode(tokenizer.encode(text)) == text


# ---------------------------------------------------------------------------------------------------------------
# Char tokenizer


def test_char_tokenizer_has_one_id_per_character_including_cjk_and_emoji(char_tokenizer):
    assert char_tokenizer.convert_ids_to_tokens(char_tokenizer.encode("世界🙂")) == ["世", "界", "🙂"]
    assert char_tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    assert len(char_tokenizer) == len(SPECIAL_TOKENS) + len(set(CORPUS))


def test_char_tokenizer_maps_unseen_characters_to_unk(char_tokenizer):
    ids = char_tokenizer.encode("Hi ЖЖ ☃")  # 'H', 'i' and ' ' are known; Cyrillic and the snowman are not
    unk = char_tokenizer.unk_token_id
    assert ids[:3] == char_tokenizer.encode("Hi ") and unk not in ids[:3]
    assert ids[3:] == [unk, unk, char_tokenizer.encode(" ")[0], unk]
    assert char_tokenizer.decode(ids) == "Hi <unk><unk> <unk>"


def test_char_tokenizer_rejects_an_empty_corpus():
    with pytest.raises(ValueError, match="corpus is empty"):
        TinyGPTCharTokenizer.from_corpus("")


def test_char_tokenizer_save_and_load_through_auto_tokenizer(char_tokenizer, tmp_path):
    char_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)

    assert type(loaded) is TinyGPTCharTokenizer
    assert loaded.get_vocab() == char_tokenizer.get_vocab()
    assert loaded.chat_template == char_tokenizer.chat_template
    assert loaded.all_special_ids == char_tokenizer.all_special_ids
    assert loaded.apply_chat_template(CONVERSATION) == char_tokenizer.apply_chat_template(CONVERSATION)
    assert loaded.encode("héllo 世界 Ж") == char_tokenizer.encode("héllo 世界 Ж")


# ---------------------------------------------------------------------------------------------------------------
# GPT-2 tokenizer with chat tokens


def test_gpt2_tokenizer_keeps_gpt2_ids_and_appends_the_chat_tokens(gpt2_tokenizer):
    assert gpt2_tokenizer.vocab_size == 50257
    assert gpt2_tokenizer.encode("<|endoftext|>") == [50256]
    assert gpt2_tokenizer.encode("Hello world") == [15496, 995]  # GPT-2's own ids for these words
    assert len(gpt2_tokenizer) == 50257 + len(SPECIAL_TOKENS)
    assert sorted(gpt2_tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)) == list(range(50257, len(gpt2_tokenizer)))


def test_model_resized_to_the_gpt2_tokenizer_keeps_its_tied_head(gpt2_tokenizer):
    config = TinyGPTConfig(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = TinyGPTForCausalLM(config).eval()
    model.resize_token_embeddings(len(gpt2_tokenizer), pad_to_multiple_of=64)

    assert model.config.vocab_size == 50304 and model.config.vocab_size % 64 == 0
    assert model.lm_head.weight is model.transformer.wte.weight
    ids = gpt2_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(ids["input_ids"]).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 50304)


def test_gpt2_tokenizer_save_and_load(gpt2_tokenizer, tmp_path):
    gpt2_tokenizer.save_pretrained(tmp_path)
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_gpt2_chat_tokenizer(tmp_path)):
        assert len(loaded) == len(gpt2_tokenizer)
        assert loaded.chat_template == gpt2_tokenizer.chat_template
        assert loaded.apply_chat_template(CONVERSATION) == gpt2_tokenizer.apply_chat_template(CONVERSATION)
        assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
            gpt2_tokenizer.bos_token_id,
            gpt2_tokenizer.eos_token_id,
            gpt2_tokenizer.pad_token_id,
        )
