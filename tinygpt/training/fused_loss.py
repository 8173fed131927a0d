"""The fused linear + cross-entropy loss of CUDA runs: `--use_liger_kernel` (HF's own flag), with Liger Kernel
installed (the `gpu` extra), on by default on CUDA where the vocabulary is wide (`fused_loss_pays`).

Why: the plain loss writes the (B, T, vocab_size) logits, upcasts them to fp32 and reads them back for the
softmax and again for its gradient; for GPT-2's vocabulary they are the largest activation of the model by far.
Liger Kernel's fused linear cross-entropy takes the logits a chunk of rows at a time, computes the loss and the
logits' gradient in one Triton kernel, and keeps no logits. It is a well-kept library (LinkedIn's, and what
transformers' own `use_liger_kernel` calls for the models it knows), so all that is written here is transformers'
label shift and reduction around it.

On gpt2-small's step it is both faster and smaller than the plain loss, with chunks larger than Liger's default
(docs/performance.md has the figures, each beside the plain loss in the same run).
The model side is one hook, `TinyGPTForCausalLM.fused_linear_loss`: training sets it, saving never sees it.
"""

import importlib.util

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # transformers' label for "no loss here"


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def fused_loss_pays(config) -> bool:
    """Whether the logits outweigh a position's other activations, as GPT-2's 50,304 against 768 wide do. A
    character vocabulary's are a sliver, and there the fused loss's host sync and graph break would cost more
    than it saves, so its default keeps the plain loss."""
    return config.vocab_size >= 8 * config.n_embd


# Liger's kernels are Triton already, and its autograd Function reads a count from the device: a compiled
# model's graph ends before it, and the loss runs as Liger wrote it.
@torch.compiler.disable
def liger_causal_lm_loss(hidden, weight, labels, num_items_in_batch=None, ignore_index=IGNORE_INDEX, **_):
    """transformers' ForCausalLMLoss, fused: hidden (B, T, C), weight (vocab_size, C), labels (B, T).

    As there, position t predicts labels[t + 1] (the last position nothing), and the summed loss is divided by
    the Trainer's num_items_in_batch when it is given (gradient accumulation), else averaged."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    targets = F.pad(labels, (0, 1), value=ignore_index)[:, 1:].to(hidden.device)  # (B, T), shifted by one
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = liger_fused_linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]),  # (B * T, C)
        weight,
        targets.reshape(-1),  # (B * T,)
        ignore_index=ignore_index,
        reduction=reduction,
        # Chunks 8x Liger's default (4,096 rows of gpt2-small's 32 x 1024): each chunk adds its share of the head's
        # gradient into one fp32 buffer of vocab_size x C, so fewer chunks mean fewer passes over it.
        chunk_mem_const=8,
    )
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def use_fused_loss(model) -> None:
    """Train `model` (a TinyGPTForCausalLM, or a PEFT model around one) with Liger's fused loss."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.fused_linear_loss = liger_causal_lm_loss


__all__ = ["fused_loss_pays", "liger_causal_lm_loss", "liger_installed", "use_fused_loss"]
