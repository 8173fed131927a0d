"""`tinygpt export`: plain GPT-2 folders run in stock transformers without tinygpt; GGUF files run in llama.cpp.

The hf exports are loaded in a subprocess where `import tinygpt` fails and trust_remote_code is off, and must
give what the tinygpt model gives: the same ids for text with CJK and unseen characters, the same chat rendering,
the same 30 greedy tokens. GGUF files are read back with gguf's reader, then run in llama.cpp through
llama-cpp-python (slow): the same prompt ids, logits within 1e-2 relative, the same 20 greedy tokens.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.tiny_models import save_tiny_model
from tinygpt import CHAT_TEMPLATE, TinyGPTCharTokenizer, TinyGPTConfig, TinyGPTForCausalLM, load_gpt2_chat_tokenizer
from tinygpt.cli import main
from tinygpt.hub.export_hf import to_gpt2

# CJK, accents, a 4-byte emoji, special tokens inside text, and characters no corpus below holds (-> <unk>).
TEXT = "hello 你好世界, <user>: é ü 😀 <EOS>\n\tok 한국어 ∑ <unk>"
CORPUS = "hello world, 你好世界 é ü 😀 how are you? fine <>:!?\n"
CONVERSATION = [
    {"role": "system", "content": "be kind"},
    {"role": "user", "content": "你好 world é😀"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "how are you?"},
]
# llama.cpp has no <unk> for byte-level BPE (it drops characters outside the vocab): only known characters here.
KNOWN_CHARS_CONVERSATION = CONVERSATION[1:]
GREEDY_TOKENS = 30

# Runs in a fresh interpreter: tinygpt cannot be imported, no remote code; prints what it got as JSON.
PLAIN_LOADER = """
import json, sys
sys.modules["tinygpt"] = None  # `import tinygpt` raises ImportError
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text, conversation, n_new = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt")["input_ids"]
greedy = model.generate(prompt, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new)[0, prompt.shape[1]:]
print(json.dumps({
    "model_class": type(model).__name__,
    "ids": tokenizer(text)["input_ids"],
    "decoded": tokenizer.decode(tokenizer(text)["input_ids"]),
    "chat": tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False),
    "chat_ids": prompt[0].tolist(),
    "greedy": greedy.tolist(),
    "special": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token],
}))
"""


def char_tokenizer():
    return TinyGPTCharTokenizer.from_corpus(CORPUS)


@pytest.fixture(scope="module", params=["char", "gpt2"])
def saved_model(request, tmp_path_factory):
    """(folder, model, tokenizer): a tiny random TinyGPT with the char tokenizer or GPT-2's BPE + chat tokens."""
    if request.param == "char":
        tokenizer = char_tokenizer()
    else:
        shared = request.getfixturevalue("shared_data")
        tokenizer = load_gpt2_chat_tokenizer(shared / "gpt2")
    folder = tmp_path_factory.mktemp(f"model-{request.param}")
    model = save_tiny_model(folder, tokenizer, n_positions=128)  # the conversation + 30 new tokens fit
    return folder, model, tokenizer


def tinygpt_greedy(model, prompt_ids: list[int], n_new: int) -> list[int]:
    prompt = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(prompt, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new)
    return out[0, prompt.shape[1] :].tolist()


def test_hf_export_runs_without_tinygpt_with_the_same_ids_chat_and_greedy_tokens(saved_model, tmp_path):
    folder, model, tokenizer = saved_model
    assert main(["export", str(folder), str(tmp_path / "plain")]) == 0
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_LOADER,
            str(tmp_path / "plain"),
            TEXT,
            json.dumps(CONVERSATION),
            str(GREEDY_TOKENS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    assert plain["model_class"] == "GPT2LMHeadModel"
    ids = tokenizer(TEXT)["input_ids"]
    assert plain["ids"] == ids
    if isinstance(tokenizer, TinyGPTCharTokenizer):
        assert tokenizer.unk_token_id in ids  # the unseen characters really were unknown
    assert plain["decoded"] == tokenizer.decode(ids)
    chat = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert plain["chat"] == chat
    chat_ids = tokenizer(chat)["input_ids"]
    assert plain["chat_ids"] == chat_ids
    assert plain["greedy"] == tinygpt_greedy(model, chat_ids, GREEDY_TOKENS)
    assert plain["special"] == [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token]


def test_hf_export_writes_config_card_and_chat_template(tmp_path):
    folder = tmp_path / "model"
    save_tiny_model(folder, char_tokenizer())
    assert main(["export", str(folder), str(tmp_path / "plain"), "--dtype", "f16"]) == 0
    plain = tmp_path / "plain"
    config = json.loads((plain / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["n_positions"]) == ("gpt2", ["GPT2LMHeadModel"], 64)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 3, 0)
    assert "auto_map" not in config  # no remote code
    assert json.loads((plain / "generation_config.json").read_text())["eos_token_id"] == 3
    assert json.loads((plain / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (plain / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    with safe_open(plain / "model.safetensors", framework="pt") as weights:
        assert weights.get_tensor("transformer.h.0.attn.c_attn.weight").dtype == torch.float16
    card = (plain / "README.md").read_text()
    assert "library_name: transformers" in card and "vllm serve" in card and "AutoModelForCausalLM" in card
    assert not list(plain.glob("*.py"))


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_gpt2_is_the_same_function_without_biases_and_with_either_gelu(activation):
    torch.manual_seed(0)
    config = TinyGPTConfig(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, bias=False, activation_function=activation
    )
    model = TinyGPTForCausalLM(config).eval()
    for parameter in model.parameters():  # larger weights, so a wrong activation shows
        torch.nn.init.normal_(parameter, std=0.5)
    ids = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(to_gpt2(model)(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "{out}"], "neither a model folder nor a Hub repo id"),
        (["{model}", "{out}", "--format", "gguf", "--dtype", "bf16"], "GGUF export writes f32 or f16"),
        (["{model}", "{existing}"], "already exists"),
        (["{model}", "{out}", "--format", "gguf"], "name it with .gguf"),
        (["{config_only}", "{out}"], "no model.safetensors"),
    ],
)
def test_export_errors_are_one_line(args, message, tmp_path, capsys):
    model = tmp_path / "model"
    save_tiny_model(model, char_tokenizer())
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_bytes((model / "config.json").read_bytes())
    paths = dict(
        missing=tmp_path / "nope",
        out=tmp_path / "out",
        model=model,
        existing=tmp_path / "existing",
        config_only=tmp_path / "config-only",
    )
    capsys.readouterr()  # what saving the model printed (a progress bar, unless an earlier export turned bars off)
    assert main(["export", *(arg.format(**paths) for arg in args)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinygpt export: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists() and (tmp_path / "existing" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("out_name, format", [("plain", "hf"), ("model.gguf", "gguf")])
def test_a_failed_write_leaves_nothing_and_touches_no_other_file(out_name, format, tmp_path):
    """A file-size limit (as a full disk would) stops the export midway: one line, no half-written export, and a
    file of the user's that an earlier version's temporary name would have taken (OUT.partial) is left alone."""
    model = tmp_path / "model"
    save_tiny_model(model, char_tokenizer(), vocab_size=32_768)  # an embedding of 4 MB, past the limit below
    bystander = tmp_path / f"{out_name}.partial"
    bystander.write_text("mine")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
    run = f"from tinygpt.cli import main; raise SystemExit(main({['export', str(model), out_name, '--format', format]!r}))"
    result = subprocess.run(
        [sys.executable, "-c", limit + run], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"tinygpt export: error: cannot write {out_name}: ")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["model", bystander.name])
    assert bystander.read_text() == "mine"


# -- GGUF -------------------------------------------------------------------------------------------------------


def gguf_value(reader, key):
    return reader.get_field(key).contents()


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_metadata_reads_back(dtype, tmp_path):
    gguf = pytest.importorskip("gguf", reason="needs the gguf package (pip install tinygpt[export])")
    tokenizer = char_tokenizer()
    model = save_tiny_model(tmp_path / "model", tokenizer)
    assert (
        main(["export", str(tmp_path / "model"), str(tmp_path / "m.gguf"), "--format", "gguf", "--dtype", dtype]) == 0
    )
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    config = model.config
    assert gguf_value(reader, "general.architecture") == "gpt2"
    assert gguf_value(reader, "gpt2.context_length") == config.n_positions
    assert gguf_value(reader, "gpt2.embedding_length") == config.n_embd
    assert gguf_value(reader, "gpt2.feed_forward_length") == 4 * config.n_embd
    assert gguf_value(reader, "gpt2.block_count") == config.n_layer
    assert gguf_value(reader, "gpt2.attention.head_count") == config.n_head
    assert gguf_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert gguf_value(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert gguf_value(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert gguf_value(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config.vocab_size
    assert tokens[tokenizer.convert_tokens_to_ids("你")] == "ä½ł"  # U+4F60 = e4 bd a0 in GPT-2's byte alphabet
    assert tokens[tokenizer.bos_token_id] == "<BOS>"
    merges = gguf_value(reader, "tokenizer.ggml.merges")
    assert "ä ½" in merges and "ä½ ł" in merges
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert len(types) == 2 + 12 * config.n_layer + 2
    assert types["blk.0.attn_qkv.weight"] == dtype.upper() and types["blk.0.attn_qkv.bias"] == "F32"


def llama_greedy(llm, prompt_ids: list[int], n_new: int) -> tuple[np.ndarray, list[int]]:
    """(prompt logits (T, vocab), n_new greedy ids) from llama.cpp."""
    llm.reset()
    llm.eval(prompt_ids)
    logits = np.array(llm.scores[: len(prompt_ids)])
    new = []
    for _ in range(n_new):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    return logits, new


@pytest.mark.slow
def test_gguf_runs_in_llama_cpp_like_tinygpt(saved_model, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (.ci/run installs it)")
    folder, model, tokenizer = saved_model  # GPT-2's tanh GELU, the one llama.cpp's gpt2 computes
    assert main(["export", str(folder), str(tmp_path / "m.gguf"), "--format", "gguf", "--dtype", "f32"]) == 0
    chat = tokenizer.apply_chat_template(KNOWN_CHARS_CONVERSATION, add_generation_prompt=True, tokenize=False)
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=model.config.n_positions, logits_all=True, verbose=False)
    try:
        chat_ids = tokenizer(chat)["input_ids"]
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == chat_ids
        logits, greedy = llama_greedy(llm, chat_ids, 20)
    finally:
        llm.close()
    with torch.no_grad():
        expected = model(torch.tensor([chat_ids])).logits[0].numpy()  # (T, vocab)
    assert np.abs(logits - expected).max() <= 1e-2 * np.abs(expected).max()
    assert greedy == tinygpt_greedy(model, chat_ids, 20)


@pytest.mark.slow
def test_gguf_of_an_ascii_exact_gelu_chat_model_chats_in_llama_cpp(tmp_path):
    """No multi-byte characters, so no merges of its own; trained with the exact GELU, which llama.cpp approximates."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (.ci/run installs it)")
    from tests.chat_fixtures import trained_chat_model

    folder = trained_chat_model()
    assert main(["export", str(folder), str(tmp_path / "chat.gguf"), "--format", "gguf"]) == 0  # f16 by default
    llm = llama_cpp.Llama(str(tmp_path / "chat.gguf"), n_ctx=64, logits_all=True, verbose=False)
    try:
        prompt = "<BOS><user>:hi<EOS><assistant>:"
        reply = llm.create_completion(prompt, max_tokens=20, temperature=0.0)["choices"][0]["text"]
    finally:
        llm.close()
    assert reply == "hello!"  # greedy, stopped at <EOS>: what the model learned


@pytest.mark.parametrize("format, out_name", [("hf", "plain"), ("gguf", "model.gguf")])
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda vocab: vocab | {"Z": vocab["h"]}, "gives id"),  # two tokens, one id
        (lambda vocab: vocab | {"\ud800": max(vocab.values()) + 1}, "lone surrogate"),
    ],
    ids=["shared-id", "lone-surrogate"],
)
def test_a_vocabulary_no_file_can_hold_is_refused_in_one_line(edit, message, format, out_name, tmp_path, capsys):
    model = tmp_path / "model"
    save_tiny_model(model, char_tokenizer())
    vocab_file = model / "vocab.json"
    vocab_file.write_text(json.dumps(edit(json.loads(vocab_file.read_text(encoding="utf-8")))), encoding="utf-8")
    capsys.readouterr()
    assert main(["export", str(model), str(tmp_path / out_name), "--format", format]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinygpt export: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / out_name).exists()
