"""TinyGPTForCausalLM through its public entry points: generate (caches, padding, the window's end), save/load,
GPT-2 parity, and the training forward (loss, gradient checkpointing, logits_to_keep).

Models are tiny and random (tests/tiny_models.py).
"""

import pytest
import torch
import torch.nn.functional as F
import transformers.utils.logging
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    TextIteratorStreamer,
    pipeline,
)

from tests.tiny_models import tiny_model
from tinygpt import TinyGPTCharTokenizer, TinyGPTForCausalLM
from tinygpt.modeling_tinygpt import CACHE_FIELD  # `cache` from transformers 5.24 on, `past_key_values` before

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak!\n"
NEW_TOKENS = 120


@pytest.fixture(scope="module")
def tokenizer():
    return TinyGPTCharTokenizer.from_corpus(CORPUS)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, n_positions=192)


def greedy(model, input_ids, new_tokens=NEW_TOKENS, **kwargs):
    """Greedy decoding of exactly `new_tokens` tokens (min_new_tokens keeps EOS from ending it early)."""
    return model.generate(
        input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs
    )  # (B, T_prompt + new_tokens)


# ---------------------------------------------------------------------------------------------------------------
# Generation


def test_greedy_generate_is_identical_with_and_without_kv_cache(model, tokenizer):
    prompt = tokenizer("Before we proceed", return_tensors="pt").input_ids
    without_cache = greedy(model, prompt, use_cache=False)
    dynamic_cache = greedy(model, prompt, **{CACHE_FIELD: DynamicCache(config=model.config)})
    static_cache = greedy(model, prompt, cache_implementation="static")

    assert without_cache.shape == (1, prompt.shape[1] + NEW_TOKENS)
    assert len(set(without_cache[0, prompt.shape[1] :].tolist())) > 5, "the random model should not be degenerate"
    assert torch.equal(dynamic_cache, without_cache)
    assert torch.equal(static_cache, without_cache)


def test_left_padded_batch_matches_each_row_generated_alone(model, tokenizer):
    prompts = ["Speak", "All: Speak, speak!", "hear me"]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert (batch.attention_mask == 0).any(), "the prompts must differ in length for padding to matter"

    batched = model.generate(**batch, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = greedy(model, tokenizer(prompt, return_tensors="pt").input_ids, new_tokens=30)
        assert torch.equal(batched[row, batch.input_ids.shape[1] :], alone[0, alone.shape[1] - 30 :]), prompt


def test_generate_inside_the_window_is_hfs_own_with_a_streamer(model, tokenizer):
    prompt = tokenizer("Speak", return_tensors="pt").input_ids
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    out = greedy(model, prompt, new_tokens=40, streamer=streamer)
    assert "".join(streamer) == tokenizer.decode(out[0, prompt.shape[1] :])


def test_generate_past_the_window_names_the_engine(tokenizer):
    model = tiny_model(tokenizer, n_positions=24)
    prompt = tokenizer("Speak", return_tensors="pt").input_ids
    with pytest.raises(ValueError, match=r"position 24 is past the context window.*tinygpt\.decoding\.engine\.Engine"):
        greedy(model, prompt, new_tokens=40)


def test_either_cache_name_is_accepted_and_the_output_names_it_as_transformers_does(model, tokenizer):
    ids = tokenizer("Before we", return_tensors="pt").input_ids
    full = model(ids, use_cache=False).logits[:, -1]
    for name in ("cache", "past_key_values"):
        cache = DynamicCache(config=model.config)
        first = model(ids[:, :-1], **{name: cache})
        assert getattr(first, CACHE_FIELD) is cache and cache.get_seq_length() == ids.shape[1] - 1
        step = model(ids[:, -1:], **{name: cache}).logits[:, -1]
        torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_newest_transformers_prints_no_deprecation_warning(model, tokenizer, tmp_path, recwarn, capfd):
    """Save, load, generate (dynamic and static cache) and a pipeline: no FutureWarning / DeprecationWarning from
    transformers, and nothing about a deprecated argument in its log."""
    transformers.utils.logging.warning_once.cache_clear()  # a warning an earlier test drew would not print again
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = tokenizer("Speak", return_tensors="pt").input_ids
    greedy(loaded, prompt, new_tokens=10)
    greedy(loaded, prompt, new_tokens=10, cache_implementation="static")
    pipeline("text-generation", model=loaded, tokenizer=tokenizer)("Speak", max_new_tokens=10, do_sample=False)
    transformers_warnings = [
        str(w.message)
        for w in recwarn
        if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "transformers" in w.filename
    ]
    assert transformers_warnings == []
    assert "deprecated" not in capfd.readouterr().err.lower()


# ---------------------------------------------------------------------------------------------------------------
# Save / load


def test_save_and_load_round_trip(model, tokenizer, tmp_path):
    model.generation_config = GenerationConfig.from_model_config(model.config)
    model.generation_config.max_new_tokens = 77
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is TinyGPTForCausalLM
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(loaded_state[name], tensor), name
    assert AutoConfig.from_pretrained(tmp_path).to_diff_dict() == model.config.to_diff_dict()
    assert loaded.generation_config.max_new_tokens == 77
    assert loaded.generation_config.eos_token_id == tokenizer.eos_token_id

    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded_tokenizer) is TinyGPTCharTokenizer
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    prompt = loaded_tokenizer("Speak", return_tensors="pt").input_ids
    assert torch.equal(greedy(loaded.eval(), prompt, 20), greedy(model, prompt, 20))


# ---------------------------------------------------------------------------------------------------------------
# GPT-2 parity


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2)
    return GPT2LMHeadModel(config).eval()


def assert_same_logits_and_cached_step(ours, gpt2):
    ids = torch.randint(0, gpt2.config.vocab_size, (2, 20))
    next_ids = torch.randint(0, gpt2.config.vocab_size, (2, 1))
    with torch.no_grad():
        reference, ours_out = gpt2(ids, use_cache=True), ours(ids, use_cache=True)
        torch.testing.assert_close(ours_out.logits, reference.logits, atol=1e-4, rtol=0)
        cached = {CACHE_FIELD: getattr(reference, CACHE_FIELD)}
        reference_step = gpt2(next_ids, **cached).logits  # (2, 1, vocab)
        ours_step = ours(next_ids, **{CACHE_FIELD: getattr(ours_out, CACHE_FIELD)}).logits
    torch.testing.assert_close(ours_step, reference_step, atol=1e-4, rtol=0)
    full = ours(torch.cat([ids, next_ids], dim=1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(ours_step, full, atol=1e-5, rtol=0)


def test_from_gpt2_model_matches_gpt2_logits_and_kv_cache_step(gpt2):
    ours = TinyGPTForCausalLM.from_gpt2(gpt2).eval()
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert_same_logits_and_cached_step(ours, gpt2)


def test_from_gpt2_accepts_a_saved_gpt2_folder(gpt2, tmp_path):
    gpt2.save_pretrained(tmp_path)
    assert_same_logits_and_cached_step(TinyGPTForCausalLM.from_gpt2(tmp_path).eval(), gpt2)


def test_from_gpt2_takes_the_exact_gelu_too(gpt2):
    """GPT2Config allows the exact GELU, which is what `tinygpt export` writes for a model trained with it."""
    exact = GPT2LMHeadModel(GPT2Config(**{**gpt2.config.to_dict(), "activation_function": "gelu"})).eval()
    exact.load_state_dict(gpt2.state_dict())
    ours = TinyGPTForCausalLM.from_gpt2(exact).eval()
    assert ours.config.activation_function == "gelu"
    assert_same_logits_and_cached_step(ours, exact)


def test_from_gpt2_refuses_a_checkpoint_missing_weights(gpt2, tmp_path):
    """transformers would fill them with random values and only warn: a conversion must not train from those."""
    state = {name: tensor for name, tensor in gpt2.state_dict().items() if not name.startswith("transformer.h.1.")}
    GPT2LMHeadModel(gpt2.config).save_pretrained(tmp_path, state_dict=state)
    with pytest.raises(ValueError, match=r"from_gpt2: the checkpoint lacks 12 weights \(transformer.h.1."):
        TinyGPTForCausalLM.from_gpt2(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Training forward


def loss_and_gradients(model, input_ids, labels):
    """(loss, gradients, how often block 0 started): checkpointing runs each block again during backward."""
    block_runs = []
    hook = model.transformer.h[0].attn.register_forward_pre_hook(lambda *args: block_runs.append(1))
    model.zero_grad()
    loss = model(input_ids, labels=labels).loss
    loss.backward()
    hook.remove()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}, len(block_runs)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer):
    model = tiny_model(tokenizer).train()  # dropout is 0.0, so training mode is deterministic
    input_ids = tokenizer([CORPUS[:40]], return_tensors="pt").input_ids
    plain_loss, plain_grads, plain_runs = loss_and_gradients(model, input_ids, input_ids)
    model.gradient_checkpointing_enable()
    checkpointed_loss, checkpointed_grads, checkpointed_runs = loss_and_gradients(model, input_ids, input_ids)

    assert (plain_runs, checkpointed_runs) == (1, 2)

    torch.testing.assert_close(checkpointed_loss, plain_loss, atol=1e-6, rtol=0)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_logits_to_keep_one_returns_only_the_last_position(model, tokenizer):
    input_ids = tokenizer(["Speak, speak!"], return_tensors="pt").input_ids
    with torch.no_grad():
        full = model(input_ids).logits  # (1, T, vocab)
        last = model(input_ids, logits_to_keep=1).logits
    assert last.shape == (1, 1, model.config.vocab_size)
    torch.testing.assert_close(last, full[:, -1:])


def test_exact_gelu_is_a_config_choice_kept_by_save_and_load(model, tokenizer, tmp_path):
    config = model.config.__class__(**{**model.config.to_dict(), "activation_function": "gelu"})
    exact = TinyGPTForCausalLM(config).eval()
    exact.load_state_dict(model.state_dict())  # the same weights: only the MLP's GELU differs
    input_ids = tokenizer(["Speak, speak!"], return_tensors="pt").input_ids
    with torch.no_grad():
        tanh_logits, exact_logits = model(input_ids).logits, exact(input_ids).logits
    assert not torch.equal(tanh_logits, exact_logits)
    torch.testing.assert_close(exact_logits, tanh_logits, atol=0.05, rtol=0)  # two forms of one function
    exact.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.activation_function == "gelu"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, exact_logits)


def test_labels_of_minus_100_are_ignored_by_the_loss(model, tokenizer):
    input_ids = tokenizer(["All: Speak, speak!"], return_tensors="pt").input_ids
    labels = input_ids.clone()
    labels[:, :6] = -100  # e.g. the prompt part of a chat turn
    with torch.no_grad():
        out = model(input_ids, labels=labels)
    # next-token prediction: position t predicts label t + 1
    logits, targets = out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    manual = F.cross_entropy(logits[targets != -100], targets[targets != -100])
    torch.testing.assert_close(out.loss, manual)
    assert not torch.allclose(out.loss, model(input_ids, labels=input_ids).loss)


def test_a_fused_linear_loss_replaces_the_head_while_training_or_when_logits_are_skipped(tokenizer):
    """The hook training sets on CUDA (Liger's fused loss there): called with the hidden states, the head's weight,
    the labels and the Trainer's loss arguments; eval and generation keep the plain head."""
    model = tiny_model(tokenizer)
    calls = []

    def head_and_loss_in_torch(hidden, weight, labels, **loss_kwargs):  # what a fused loss computes, unfused
        calls.append(sorted(loss_kwargs))
        logits = (hidden @ weight.T)[:, :-1].flatten(0, 1)
        return F.cross_entropy(logits, labels[:, 1:].flatten(), reduction="sum") / loss_kwargs["num_items_in_batch"]

    input_ids = tokenizer(["All: Speak, speak!"], return_tensors="pt").input_ids
    count = torch.tensor(input_ids.shape[1] - 1)
    plain = model.train()(input_ids, labels=input_ids, num_items_in_batch=count)
    model.fused_linear_loss = head_and_loss_in_torch
    fused = model(input_ids, labels=input_ids, num_items_in_batch=count)
    assert fused.logits is None and calls == [["num_items_in_batch"]]
    torch.testing.assert_close(fused.loss, plain.loss)

    model.eval()
    assert model(input_ids, labels=input_ids).logits is not None and len(calls) == 1  # eval: the plain head
    skipped = model(input_ids, labels=input_ids, skip_logits=True, num_items_in_batch=count)  # the Trainer's eval
    assert skipped.logits is None and len(calls) == 2
    assert model.generate(input_ids, max_new_tokens=3, do_sample=False).shape[1] == input_ids.shape[1] + 3
    assert len(calls) == 2
