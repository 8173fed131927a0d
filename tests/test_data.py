"""The data layer: text sources through datasets, every tokenizer kind, the nanoGPT split, random windows,
chat files in both forms with assistant-only labels, and the one-line errors for bad input."""

import functools
import http.server
import json
import threading
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from tinygpt import SPECIAL_TOKENS
from tinygpt.data import text as data
from tinygpt.data import token_stream
from tinygpt.data.conversations import conversation_dataset, encode_conversations, read_conversations
from tinygpt.data.errors import DataError
from tinygpt.data.text import streamed_windows, text_documents
from tinygpt.data.token_stream import (
    TokenStream,
    TokenWindows,
    WindowCollator,
    encode_text,
    split_train_val,
    token_dtype,
    tokenize_corpus,
)
from tinygpt.data.tokenizers import build_tokenizer

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am tinygpt."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
]


# ---------------------------------------------------------------------------------------------------------------
# Text sources


def read_text(*args, **kwargs) -> str:
    """The corpus `text_documents` gives, its chunks joined."""
    return "".join(text_documents(*args, **kwargs)["text"])


def test_a_text_file_is_read_exactly(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    assert read_text([str(path)]) == CORPUS


def test_text_files_are_joined_in_order(tmp_path):
    first, second, third = tmp_path / "1.txt", tmp_path / "2.txt", tmp_path / "3.txt"
    first.write_text("one\n", encoding="utf-8")
    second.write_text("two, no final newline", encoding="utf-8")
    third.write_text("three 世界\n", encoding="utf-8")
    # A newline goes between two documents only where the first lacks one.
    assert read_text([str(first), str(second), str(third)]) == "one\ntwo, no final newline\nthree 世界\n"
    assert read_text([str(third), str(first)]) == "three 世界\none\n"


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server over tmp_path/www: the URL path of --text_file without the internet."""
    pytest.importorskip("aiohttp", reason="datasets reads URLs through fsspec[http] (aiohttp), not installed")
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_is_downloaded_through_datasets(http_folder, tmp_path):
    folder, base_url = http_folder
    (folder / "input.txt").write_text(CORPUS, encoding="utf-8")
    local = tmp_path / "local.txt"
    local.write_text("local\n", encoding="utf-8")
    assert read_text([str(local), f"{base_url}/input.txt"]) == "local\n" + CORPUS


def test_tiny_shakespeare_by_name_downloads_the_char_rnn_file(http_folder, shared_data, monkeypatch):
    assert data.TINY_SHAKESPEARE_URL == (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    )
    folder, base_url = http_folder  # the same file, served from 127.0.0.1 instead of GitHub
    (folder / "input.txt").write_bytes((shared_data / "tinyshakespeare.txt").read_bytes())
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", f"{base_url}/input.txt")
    text = read_text(dataset_name="tiny_shakespeare")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:\nBefore we proceed any further")


def test_a_missing_url_is_one_clear_line(http_folder):
    _, base_url = http_folder
    with pytest.raises(DataError, match=r"^cannot read http://127\.0\.0\.1:\d+/missing\.txt: ") as error:
        read_text([f"{base_url}/missing.txt"])
    assert "\n" not in str(error.value)


def test_a_local_dataset_folder_with_a_text_column(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = {"body": ["first document\n", "second document", "third"], "id": [1, 2, 3]}
    datasets.Dataset.from_dict(rows).to_parquet(str(folder / "train.parquet"))
    assert read_text(dataset_name=str(folder), text_column="body") == "first document\nsecond document\nthird"
    with pytest.raises(DataError) as error:
        read_text(dataset_name=str(folder))
    assert str(error.value) == (
        f"dataset {str(folder)!r} has no column 'text'; pick one of ['body', 'id'] with --text_column."
    )
    with pytest.raises(DataError, match="column 'id' holds int64, not text"):
        read_text(dataset_name=str(folder), text_column="id")


def test_a_local_jsonl_data_file_and_its_split(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"story": f"story {i}\n"}) for i in range(3)), encoding="utf-8")
    assert read_text(dataset_name=str(path), text_column="story") == "story 0\nstory 1\nstory 2\n"
    with pytest.raises(DataError, match=r"^cannot load dataset .*docs\.jsonl' \(config None, split 'test'\): "):
        read_text(dataset_name=str(path), text_column="story", dataset_split="test")


def test_text_files_then_a_dataset_column(tmp_path):
    (tmp_path / "a.txt").write_text("file, no final newline", encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"body": "row 0"}\n{"body": ""}\n{"body": "row 1"}\n', encoding="utf-8")
    assert read_text([str(tmp_path / "a.txt")], dataset_name=str(tmp_path / "rows.jsonl"), text_column="body") == (
        "file, no final newline\nrow 0\nrow 1"
    )


def test_tiny_shakespeare_from_shared_data(shared_data):
    path = shared_data / "tinyshakespeare.txt"
    text = read_text([str(path)])
    assert text == path.read_text(encoding="utf-8") and len(text) == 1_115_394
    tokenizer = build_tokenizer("char", text)
    assert len(tokenizer) == 65 + len(SPECIAL_TOKENS)
    ids = encode_text(tokenizer, text)
    assert ids.dtype == torch.long and ids.shape == (1_115_394,)
    train, val = split_train_val(ids)
    assert (len(train), len(val)) == (1_003_855, 111_539)  # nanoGPT's prepare.py counts
    assert tokenizer.decode(val[:14].tolist()) == text[1_003_855 : 1_003_855 + 14]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers: chat tokens are single ids in each kind


def check_chat_tokens(tokenizer):
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)], token
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<BOS>Be brief.<EOS><user>:Who are you?<EOS><assistant>:I am tinygpt.<EOS>"
        "<user>:What is 2 plus 3?<EOS><assistant>:5<EOS><assistant>:"
    )
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == rendered


def test_char_tokenizer_from_the_corpus():
    tokenizer = build_tokenizer("char", [CORPUS, "Who are you? I am tinygpt. What is 2 plus 3? 5 Be brief."])
    check_chat_tokens(tokenizer)
    assert tokenizer.decode(encode_text(tokenizer, CORPUS).tolist()) == CORPUS


def test_bpe_trained_on_the_corpus(shared_data):
    corpus = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    tokenizer = build_tokenizer("bpe", corpus, bpe_vocab_size=400)
    assert len(tokenizer) == 400
    check_chat_tokens(tokenizer)
    ids = encode_text(tokenizer, corpus)
    assert len(ids) < len(corpus) / 1.5  # merges learned from the corpus compress it
    assert tokenizer.decode(ids.tolist()) == corpus
    assert tokenizer.decode(tokenizer.encode("héllo 🙂 unseen ÿ")) == "héllo 🙂 unseen ÿ"  # bytes: nothing is unknown


def test_gpt2_from_a_local_vocab_and_merges_folder(shared_data):
    tokenizer = build_tokenizer(str(shared_data / "gpt2"), corpus=None)
    check_chat_tokens(tokenizer)
    assert encode_text(tokenizer, "Hello world").tolist() == [15496, 995]  # GPT-2's own ids


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_saved_tokenizer_folder_is_reused(kind, tmp_path):
    tokenizer = build_tokenizer(kind, CORPUS * 20, bpe_vocab_size=300)
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = build_tokenizer(str(tmp_path / "tok"), corpus=None)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert encode_text(reloaded, CORPUS).tolist() == encode_text(tokenizer, CORPUS).tolist()
    assert reloaded.chat_template == tokenizer.chat_template


def test_an_unknown_tokenizer_spec_is_one_clear_line(tmp_path):
    with pytest.raises(DataError) as error:
        build_tokenizer(str(tmp_path), CORPUS)
    assert str(error.value) == (
        f"--tokenizer {str(tmp_path)!r} is not char, gpt2, bpe or a folder with a saved tokenizer "
        "(tokenizer_config.json) or GPT-2's vocab.json + merges.txt."
    )


def test_encode_text_chunks_give_the_same_ids(shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:50_000]
    for tokenizer in (build_tokenizer("char", text), build_tokenizer(str(shared_data / "gpt2"), None)):
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert encode_text(tokenizer, text, chunk_chars=1000).tolist() == whole


# ---------------------------------------------------------------------------------------------------------------
# Split, windows, batches


def test_split_is_first_and_last_like_nanogpt():
    ids = torch.arange(1000)
    train, val = split_train_val(ids)
    assert torch.equal(train, torch.arange(900)) and torch.equal(val, torch.arange(900, 1000))
    train, val = split_train_val(ids, val_fraction=0.25)
    assert (len(train), len(val)) == (750, 250) and val[0] == 750


def test_windows_are_deterministic_for_a_seed():
    tokens = torch.arange(500)
    windows = TokenWindows(len(tokens), block_size=16, num_windows=64, seed=7)
    again = TokenWindows(len(tokens), block_size=16, num_windows=64, seed=7)
    other = TokenWindows(len(tokens), block_size=16, num_windows=64, seed=8)
    offsets = [windows[i]["offset"] for i in range(len(windows))]
    assert len(windows) == 64 and offsets == [again[i]["offset"] for i in range(64)]
    assert offsets != [other[i]["offset"] for i in range(64)]
    assert all(0 <= offset <= 500 - 17 for offset in offsets) and len(set(offsets)) > 40


def test_windows_are_collated_into_one_batch():
    tokens = torch.arange(1000, 1500)
    windows = TokenWindows(len(tokens), block_size=16, num_windows=10, seed=0)
    loader = torch.utils.data.DataLoader(windows, batch_size=4, collate_fn=WindowCollator(tokens, block_size=16))
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == torch.long
    for row, i in zip(batch["input_ids"], range(4), strict=True):
        offset = windows[i]["offset"]
        assert torch.equal(row, tokens[offset : offset + 16])
    assert torch.equal(batch["labels"], batch["input_ids"])


def test_a_corpus_shorter_than_the_context_is_one_clear_line():
    with pytest.raises(DataError) as error:
        TokenWindows(100, block_size=128, num_windows=10)
    assert str(error.value) == (
        "the corpus has 100 tokens but a context of 128 needs at least 129; "
        "pass a smaller --block_size (at most 99) or more text."
    )


# ---------------------------------------------------------------------------------------------------------------
# The token cache: tokenized once by datasets' map, read in place from the memory map


def test_a_corpus_is_tokenized_once_and_reused_from_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS * 50, encoding="utf-8")
    tokenizer = build_tokenizer("char", CORPUS)
    tokens, reused = tokenize_corpus(tokenizer, text_documents([str(path)]))
    assert not reused and all(Path(f["filename"]).is_file() for f in tokens.cache_files)
    stream = TokenStream(tokens)
    assert stream.read(0, len(stream)).tolist() == encode_text(tokenizer, CORPUS * 50).tolist()

    def tokenizing_again(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(token_stream, "_encode_rows", tokenizing_again)
    again, reused = tokenize_corpus(tokenizer, text_documents([str(path)]))
    assert reused and again.cache_files == tokens.cache_files
    path.write_text(CORPUS * 51, encoding="utf-8")  # an edited file is a new cache key
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_corpus(tokenizer, text_documents([str(path)]))


def test_the_characters_of_a_corpus_are_listed_once_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS * 50 + "\u00e9\u4e2d", encoding="utf-8")
    characters = token_stream.corpus_characters(text_documents([str(path)]))
    assert characters == "".join(sorted(set(CORPUS + "\u00e9\u4e2d")))

    def scanning_again(*args, **kwargs):
        raise AssertionError("scanned the text again instead of reading the cache")

    monkeypatch.setattr(token_stream, "_characters", scanning_again)
    assert token_stream.corpus_characters(text_documents([str(path)])) == characters


def test_windows_are_read_from_the_memory_map_across_chunks(tmp_path, monkeypatch, shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "CHUNK_CHARS", 5_000)  # 40 chunk rows, several Arrow record batches
    tokenizer = build_tokenizer(str(shared_data / "gpt2"), None)
    documents = text_documents([str(tmp_path / "a.txt")])
    assert len(documents) >= 30 and "".join(documents["text"]) == text
    stream = TokenStream(tokenize_corpus(tokenizer, documents, num_proc=2)[0])
    assert len(stream.pieces) > 1
    for piece in stream.pieces:  # views of the memory-mapped files: uint16, read-only, no copy of their own
        assert piece.dtype == np.uint16 and not piece.flags.writeable and not piece.flags.owndata
    expected = encode_text(tokenizer, text)  # the chunks' ids are the whole text's
    assert stream.read(0, len(stream)).tolist() == expected.tolist()
    crossing = int(stream.starts[1]) - 5  # a window across two record batches
    batch = WindowCollator(stream, block_size=16)([{"offset": crossing}, {"offset": 0}])
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2, 16)
    assert torch.equal(batch["input_ids"][0], expected[crossing : crossing + 16])


def test_uint16_where_the_vocabulary_fits_else_uint32(shared_data):
    assert token_dtype(build_tokenizer(str(shared_data / "gpt2"), None)) == "uint16"  # 50,257 + the chat tokens
    assert token_dtype(build_tokenizer("char", CORPUS)) == "uint16"
    assert token_dtype(list(range(1 << 16))) == "uint16" and token_dtype(list(range((1 << 16) + 1))) == "uint32"


def test_a_streamed_dataset_gives_consecutive_windows(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": f"document {i}\n"}) for i in range(40)), encoding="utf-8")
    tokenizer = build_tokenizer("char", "document 0123456789\n")
    windows = list(streamed_windows(tokenizer, str(path), None, "body", "train", block_size=16))
    stream = encode_text(tokenizer, "".join(f"document {i}\n" for i in range(40)))
    assert len(windows) == len(stream) // 16  # the corpus fits in one map batch: one leftover dropped
    for i, window in enumerate(windows):
        assert torch.equal(window["input_ids"], stream[16 * i : 16 * (i + 1)])
        assert torch.equal(window["labels"], window["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# Conversations


@pytest.fixture(scope="module", params=["char", "bpe", "gpt2"])
def chat_tokenizer(request):
    if request.param == "gpt2":
        return build_tokenizer(str(request.getfixturevalue("shared_data") / "gpt2"), None)
    corpus = [message["content"] for message in CONVERSATION] * 20
    return build_tokenizer(request.param, corpus, bpe_vocab_size=300)


def test_only_assistant_replies_and_their_eos_carry_labels(chat_tokenizer):
    encoded = encode_conversations(chat_tokenizer, [CONVERSATION], max_length=512)
    input_ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    assert input_ids == chat_tokenizer.apply_chat_template(CONVERSATION)["input_ids"]
    assert len(labels) == len(input_ids)
    assert all(label in (-100, token) for label, token in zip(labels, input_ids, strict=True))
    labelled = [label for label in labels if label != -100]
    assert chat_tokenizer.decode(labelled) == "I am tinygpt.<EOS>5<EOS>"
    # Everything up to the first reply is what generation's prompt renders: none of it is labelled.
    prompt = chat_tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)["input_ids"]
    assert input_ids[: len(prompt)] == prompt and set(labels[: len(prompt)]) == {-100}


def test_conversations_are_truncated_to_max_length(chat_tokenizer):
    encoded = encode_conversations(chat_tokenizer, [CONVERSATION], max_length=10)
    assert len(encoded["input_ids"][0]) == len(encoded["labels"][0]) == 10


def test_conversation_dataset_pads_with_the_seq2seq_collator():
    tokenizer = build_tokenizer("char", [message["content"] for message in CONVERSATION])
    short = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "I am tinygpt."}]
    late_reply = [{"role": "user", "content": "What is 2 plus 3? " * 4}, {"role": "assistant", "content": "5"}]
    dataset = conversation_dataset(tokenizer, [CONVERSATION, short, late_reply], max_length=40)
    assert isinstance(dataset, datasets.Dataset) and dataset.column_names == ["input_ids", "labels"]
    assert len(dataset) == 2  # the reply of the third lies past max_length: no loss to learn from, dropped
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    batch = collator([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 40)
    short_length = len(dataset[1]["input_ids"])
    assert (batch["input_ids"][1, short_length:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][1, short_length:] == -100).all()


def test_sharegpt_and_messages_forms_in_json_and_jsonl(tmp_path):
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Who are you?"},
            {"from": "gpt", "value": "I am tinygpt."},
            {"from": "user", "value": "What is 2 plus 3?"},
            {"from": "assistant", "value": "5"},
        ]
    }
    messages = {"messages": CONVERSATION}
    (tmp_path / "chat.json").write_text(json.dumps([sharegpt, messages]), encoding="utf-8")
    (tmp_path / "chat.jsonl").write_text(json.dumps(messages) + "\n\n" + json.dumps(sharegpt) + "\n", encoding="utf-8")
    assert read_conversations(str(tmp_path / "chat.json")) == [CONVERSATION, CONVERSATION]
    assert read_conversations(str(tmp_path / "chat.jsonl")) == [CONVERSATION, CONVERSATION]


def test_the_real_sharegpt_file(shared_data):
    conversations = read_conversations(str(shared_data / "chat" / "fastchat_dummy_conversation.json"))
    assert len(conversations) == 500
    assert conversations[0][:2] == [
        {"role": "user", "content": "Who are you?"},
        {
            "role": "assistant",
            "content": "I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS).",
        },
    ]
    assert all(m["role"] == ("user", "assistant")[i % 2] for c in conversations for i, m in enumerate(c))


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"turns": []}, "record 1 has no 'conversations' (ShareGPT) or 'messages' list; give one of them."),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]},
            "record 1, turn 1: unknown role 'bot'; use human, user, gpt, assistant, system.",
        ),
        ({"messages": [{"role": "user", "content": 3}]}, "record 1, turn 0: needs 'role' and a text 'content'."),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "record 1 has no assistant turn; there is nothing to learn from it.",
        ),
        (
            {"messages": [{"role": ["user"], "content": "hi"}]},
            "record 1, turn 0: unknown role ['user']; use human, user, gpt, assistant, system.",
        ),
        (
            {"messages": [{"role": "user", "content": "\ud800"}]},
            "record 1, turn 0: its text holds an unpaired surrogate (a \\ud800-style escape).",
        ),
    ],
)
def test_a_bad_chat_record_is_named_by_its_number(tmp_path, record, problem):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"messages": CONVERSATION}, record]), encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_conversations(str(path))
    assert str(error.value) == f"{path}: {problem}"


def test_one_pretty_printed_record_is_read_as_one_conversation(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"messages": CONVERSATION}, indent=2), encoding="utf-8")
    assert read_conversations(str(path)) == [CONVERSATION]


def test_json_nested_past_pythons_limit_is_one_clear_line(tmp_path):
    for name, text, problem in [
        ("chat.json", "[" * 100_000, "is not valid JSON"),
        ("chat.jsonl", '{"messages": ' + "[" * 100_000, "line 1 .*nested too deeply"),
    ]:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=problem):
            read_conversations(str(path))


def test_bad_jsonl_line_and_bad_messages_are_one_clear_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"chat\.jsonl: line 2 is not valid JSON \(.*\); fix that line\.$"):
        read_conversations(str(path))
    tokenizer = build_tokenizer("char", "abc")
    with pytest.raises(DataError) as error:
        conversation_dataset(tokenizer, [[{"role": "tool", "content": "x"}]], max_length=10)
    assert str(error.value) == "conversation 0, turn 0: unknown role 'tool'; use system, user or assistant."


# ---------------------------------------------------------------------------------------------------------------
# Bad input files: each a one-line error naming the file and the fix


def test_a_missing_file(tmp_path):
    for read in (lambda p: read_text([p]), read_conversations):
        with pytest.raises(DataError) as error:
            read(str(tmp_path / "nope.txt"))
        assert str(error.value).startswith(f"{tmp_path / 'nope.txt'}: no such ")


def test_an_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_text([str(path)])
    assert str(error.value) == f"{path} is empty; give it some text."
    with pytest.raises(DataError) as error:
        read_conversations(str(path))
    assert str(error.value) == f"{path} is empty; give it conversations in ShareGPT or messages form."


@pytest.mark.parametrize(
    "content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", bytes(range(1, 32)) * 20 + bytes(range(128, 256))]
)
def test_a_binary_file(tmp_path, content):
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_text([str(path)])
    assert str(error.value) == f"{path} is not UTF-8 text (looks binary); pass a plain text file."


@pytest.mark.parametrize(
    "content, encoding, offset",
    [
        ("un café crème, s'il vous plaît\n" * 400, "latin1", 6),  # past the first 8 KiB as well as in it
        ("“quoted” – Windows text\n", "cp1252", 0),
    ],
)
def test_a_legacy_8_bit_text_file_is_named_as_such_not_binary(tmp_path, content, encoding, offset):
    path = tmp_path / "legacy.txt"
    path.write_bytes(content.encode(encoding))
    byte = content.encode(encoding)[offset]
    expected = (
        f"{path} is not UTF-8 text (byte 0x{byte:02x} at offset {offset}; it looks like {encoding}); convert it to "
        f"UTF-8, e.g. iconv -f {encoding} -t utf-8 {path} > utf8.txt"
    )
    for read in (lambda p: read_text([p]), read_conversations):
        with pytest.raises(DataError) as error:
            read(str(path))
        assert " ".join(str(error.value).split()) == expected


def test_no_source_at_all():
    with pytest.raises(DataError) as error:
        read_text()
    assert str(error.value) == "no training text: pass --text_file PATH_OR_URL or --dataset_name NAME."
