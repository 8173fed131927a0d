"""Tiny random TinyGPT models for the model, loading, remote-code and pipeline tests.

They use initializer_range=0.5 instead of GPT-2's 0.02: a random model with tiny weights repeats one token
forever, so a broken cache, mask or window would not change its text; larger weights make its greedy output
depend on the whole context.
"""

import torch

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM

ENGINE_CORPUS = "the quick brown fox jumps over the lazy dog 0123456789"  # the engine tests' characters


def tiny_model(tokenizer, n_positions: int = 64, vocab_size: int | None = None, seed: int = 0) -> TinyGPTForCausalLM:
    """2 layers, 32 wide, in eval mode; vocab_size defaults to len(tokenizer) padded to a multiple of 64, as
    every new tinygpt model is built."""
    torch.manual_seed(seed)
    config = TinyGPTConfig.for_tokenizer(
        tokenizer, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2, initializer_range=0.5
    )
    if vocab_size:
        config.vocab_size = vocab_size
    return TinyGPTForCausalLM(config).eval()


def save_tiny_model(folder, tokenizer, **model_kwargs) -> TinyGPTForCausalLM:
    """Save a tiny_model and its tokenizer side by side in `folder`, as training does; returns the model."""
    model = tiny_model(tokenizer, **model_kwargs)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model
