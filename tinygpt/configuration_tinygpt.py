"""TinyGPT configuration.

One typed config for every model size. Field names follow GPT-2 (`n_embd`, `n_layer`, ...) so weights and
configs map to and from `GPT2Config` in a line each; `attribute_map` adds the standard HF aliases
(`hidden_size`, `num_hidden_layers`, ...) that generation, caches and the Trainer read.

Bad shapes fail here, at construction, with a ValueError that names the field, instead of as a shape error
deep inside the first forward pass.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

ACTIVATIONS = ("gelu_new", "gelu")  # GPT-2's names: its tanh-approximated GELU, the exact GELU
# Far past any model this code is for, and small enough that a config naming more (a crafted one) fails here, in a
# line, rather than after minutes of building, or with an overflow inside torch.
MAX_LAYERS = 1024
MAX_MATRIX_ELEMENTS = 1 << 34  # one weight matrix: the embeddings, a block's projections


@strict
class TinyGPTConfig(PreTrainedConfig):
    model_type = "tinygpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
    }

    vocab_size: int = 128  # padded up to a multiple of 64 by whoever builds the model from a tokenizer
    n_positions: int = 256  # context window: the largest number of positions the model can attend over
    n_embd: int = 384
    n_layer: int = 6
    n_head: int = 6
    dropout: float | int = 0.0  # one rate for embeddings, attention probabilities and residual branches
    bias: bool = True  # biases in Linear layers and LayerNorms, as in GPT-2
    # The MLP's GELU: "gelu_new" is GPT-2's tanh approximation (what converted GPT-2 weights need); "gelu" is the
    # exact one, which trains the same and costs a tenth as much on CPUs (PyTorch's tanh form is not vectorised).
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True  # must be declared: a missing field silently unties the head in v5
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        self._check_shapes()
        super().__post_init__(**kwargs)

    def _check_shapes(self):
        """Reject shapes the model cannot be built with (a plain ValueError naming the field)."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"TinyGPTConfig: {name} must be a positive integer, got {value}.")
        if self.n_layer > MAX_LAYERS:
            raise ValueError(f"TinyGPTConfig: n_layer must be at most {MAX_LAYERS}, got {self.n_layer}.")
        for rows, name in (
            (self.vocab_size, "vocab_size"),
            (self.n_positions, "n_positions"),
            (4 * self.n_embd, "4 x n_embd"),
        ):
            if rows * self.n_embd > MAX_MATRIX_ELEMENTS:
                raise ValueError(
                    f"TinyGPTConfig: {name} x n_embd = {rows} x {self.n_embd} is past the largest weight matrix a "
                    f"TinyGPT builds ({MAX_MATRIX_ELEMENTS:,} elements)."
                )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"TinyGPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick an n_head that divides {self.n_embd}."
            )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"TinyGPTConfig: activation_function must be one of {', '.join(ACTIVATIONS)}, "
                f"got {self.activation_function!r}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TinyGPTConfig: dropout must be in [0, 1), got {self.dropout}.")

    @classmethod
    def for_tokenizer(cls, tokenizer, **fields) -> "TinyGPTConfig":
        """A config for a new model of `tokenizer`: vocab_size is the number of ids it can give (its length, or its
        highest id + 1 where a vocabulary skips ids) rounded up to a multiple of 64 (aligned matmuls; the spare
        rows are never produced by the tokenizer), special ids taken from it."""
        ids = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
        return cls(
            vocab_size=-(-ids // 64) * 64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **fields,
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


__all__ = ["TinyGPTConfig"]
