"""TinyGPT: a GPT-2-shaped decoder that is a first-class transformers model.

Read it top to bottom: attention -> MLP -> block -> model -> language-model head.

Design notes
- GPT-2 parameter names (wte, wpe, h.N.ln_1, attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, ln_f), so GPT-2
  weights load with a transpose and nothing else (`TinyGPTForCausalLM.from_gpt2`).
- Attention goes through `F.scaled_dot_product_attention`, which picks flash / memory-efficient kernels. The
  mask is built here (`attention_mask_for`) in a few lines instead of with transformers' `create_causal_mask`,
  whose signature moved within 5.x: it is None when plain causal attention is enough (training, decoding
  without padding), so SDPA takes its fastest path, and a boolean mask for left padding and static caches.
- KV cache: transformers `Cache` objects (DynamicCache, StaticCache), or anything with the same `update`. Each
  attention layer hands its new keys and values to `cache.update(k, v, layer_idx)` and attends over what comes
  back. `generate()` comes from `GenerationMixin`, so sampling, streaming, pipelines and static caches work
  unchanged.
- The cache argument is `cache` from transformers 5.24 on and `past_key_values` before; `forward` takes either
  name, and its outputs name the cache as the installed transformers does (`CACHE_FIELD`). Models saved by
  tinygpt carry this file, so they load through remote code on every transformers from the floor to the newest.
- Learned absolute positions cap the context at `n_positions`. `forward` refuses positions past it with a
  ValueError (never an index error or a device assert). Text longer than the window comes from
  `tinygpt.decoding.engine.Engine`, which slides the window as nanoGPT crops its context.
"""

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_tinygpt import TinyGPTConfig

# The outputs' name for the cache: `cache` from transformers 5.24 on, `past_key_values` before.
CACHE_FIELD = (
    "cache" if "cache" in {field.name for field in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
)


class TinyGPTAttention(nn.Module):
    """Causal multi-head self-attention with a KV cache."""

    def __init__(self, config: TinyGPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx  # which slot of the cache this layer reads and writes
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.writes_residual = True  # GPT-2's scaled init, see _init_weights
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attention_mask=None, cache: Cache | None = None, past_length=0):
        B, T, C = x.shape  # batch, new tokens, n_embd
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nh, S, hs): S = T_past + T, or a static cache's size
        mask = causal_mask(attention_mask, past_length, T, key_length=k.shape[2], device=x.device)  # None or (B,1,T,S)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class TinyGPTMLP(nn.Module):
    def __init__(self, config: TinyGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # "gelu_new" is GPT-2's tanh approximation, so converted GPT-2 weights match exactly.
        self.gelu = nn.GELU(approximate="tanh" if config.activation_function == "gelu_new" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.writes_residual = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class TinyGPTBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block. GradientCheckpointingLayer recomputes it in backward when checkpointing is on."""

    def __init__(self, config: TinyGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = TinyGPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = TinyGPTMLP(config)

    def forward(self, x, attention_mask=None, cache=None, past_length=0):
        x = x + self.attn(self.ln_1(x), attention_mask, cache, past_length)
        x = x + self.mlp(self.ln_2(x))
        return x


class TinyGPTPreTrainedModel(PreTrainedModel):
    """The HF contract in a few class attributes, plus GPT-2's initialisation."""

    config_class = TinyGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TinyGPTBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # N(0, initializer_range) for Linear/Embedding, ones/zeros for LayerNorm
        if getattr(module, "writes_residual", False):
            # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer), since each
            # block adds two of them and the stream's variance grows with depth. (Marked on the Linear itself:
            # transformers skips _init_weights for custom-code modules that hold no parameters of their own.)
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers fills weights the file lacks with random ones, drops those it has no place for, and only
        # logs either: a model so loaded would run, and write nonsense. A TinyGPT refuses it, and NaN weights.
        # (Shapes are compared here too, for a one-line error, unless the caller asked to re-initialise them.)
        wants_info = kwargs.pop("output_loading_info", False)
        reinitialise = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        refused = ["missing_keys", "unexpected_keys"] + ([] if reinitialise else ["mismatched_keys"])
        for kind, fix in (
            ("missing_keys", "the weights are incomplete or belong to another config"),
            ("unexpected_keys", "the weights belong to another config"),
            ("mismatched_keys", "the weights belong to another config"),
        ):
            if kind not in refused:
                continue
            if names := sorted(str(name if isinstance(name, str) else name[0]) for name in info.get(kind) or []):
                what = kind.split("_")[0]
                raise ValueError(
                    f"{cls.__name__}.from_pretrained: {len(names)} {what} weight(s) against config.json "
                    f"(n_layer={model.config.n_layer}), such as {names[0]}; {fix}."
                )
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters() if not p.is_meta):
            raise ValueError(
                f"{cls.__name__}.from_pretrained: the weights hold NaN or infinite values (a run that diverged?)."
            )
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # register_for_auto_class puts only the saved class in auto_map; name the base model as well so that
        # AutoModel.from_pretrained(..., trust_remote_code=True) works on machines without tinygpt too.
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": "modeling_tinygpt.TinyGPTModel",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


class TinyGPTModel(TinyGPTPreTrainedModel):
    """Embeddings + blocks + final LayerNorm: returns hidden states (B, T, n_embd)."""

    _input_embed_layer = "wte"

    def __init__(self, config: TinyGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding, shared with the LM head
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned absolute positions
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(TinyGPTBlock(config, layer_idx=i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,  # the cache's name before transformers 5.24
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("TinyGPT: pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            if input_ids.shape[-1] == 0:
                raise ValueError("TinyGPT: input_ids is empty; pass at least one token (e.g. the <BOS> id).")
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        T = inputs_embeds.shape[1]

        cache = cache if cache is not None else past_key_values
        if use_cache is None:  # a cache only helps generation; training never reuses it
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        # How many tokens the cache holds already: where the new ones go (an int, or a tensor for static caches).
        needs_past_length = position_ids is None or attention_mask is None or attention_mask.dim() == 2
        past_length = cache.get_seq_length() if cache is not None and needs_past_length else 0
        if position_ids is None:
            position_ids = (torch.arange(T, device=inputs_embeds.device) + past_length).unsqueeze(0)  # (1, T)
        self._check_window(position_ids, cache, T)
        if attention_mask is not None and attention_mask.dim() == 2 and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: plain causal attention, SDPA's fastest path

        x = self.drop(inputs_embeds + self.wpe(position_ids))  # (B, T, C)
        for block in self.h:
            x = block(x, attention_mask=attention_mask, cache=cache, past_length=past_length)
        x = self.ln_f(x)
        return BaseModelOutputWithPast(last_hidden_state=x, **{CACHE_FIELD: cache if use_cache else None})

    def _check_window(self, position_ids, cache, T):
        """A clear ValueError instead of an index error (or a CUDA device assert) in `wpe` past the window.

        Never costs a host-device sync: CPU positions are read directly; on accelerators a dynamic cache's length
        plus the new tokens bounds them (positions count tokens, padding aside). Static caches and the engine's
        own cache keep their positions inside the window themselves, and compiled graphs skip the check.
        """
        if torch.compiler.is_compiling():
            return
        if position_ids.device.type == "cpu":
            last_position = int(position_ids.max())
        else:
            past_length = cache.get_seq_length() if isinstance(cache, Cache) else None
            if not isinstance(past_length, int):
                return
            last_position = past_length + T - 1
        if last_position >= self.config.n_positions:
            raise ValueError(
                f"TinyGPT: position {last_position} is past the context window (n_positions="
                f"{self.config.n_positions}); pass at most {self.config.n_positions} tokens including the cache, "
                "or generate longer texts with tinygpt.decoding.engine.Engine, which slides the window."
            )


class TinyGPTForCausalLM(TinyGPTPreTrainedModel, GenerationMixin):
    """TinyGPTModel + a language-model head tied to the token embedding."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    # A loss computed from the hidden states and the head's weight without writing the (B, T, vocab_size) logits:
    # fused_linear_loss(hidden, lm_head.weight, labels, **loss_kwargs). None: the plain head and loss. Training
    # sets one on CUDA (tinygpt.training.fused_loss, Liger Kernel's fused linear cross-entropy); it is used while
    # training, or when a caller passes transformers' `skip_logits=True` (the Trainer does, to evaluate the loss).
    fused_linear_loss = None

    def __init__(self, config: TinyGPTConfig):
        super().__init__(config)
        self.transformer = TinyGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, new_embeddings):
        self.transformer.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,  # the cache's name before transformers 5.24
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = outputs.last_hidden_state  # (B, T, C)
        skip_logits = kwargs.pop("skip_logits", None)
        fused = self.fused_linear_loss is not None and labels is not None
        if fused and (self.training if skip_logits is None else skip_logits):
            loss = self.fused_linear_loss(hidden, self.lm_head.weight, labels, **kwargs)  # no logits at all
            return CausalLMOutputWithPast(loss=loss, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})
        # generate() only needs the last position's logits: logits_to_keep=1 skips the head for the rest.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])  # (B, T_keep, vocab_size)
        loss = None
        if labels is not None:
            # Shifts labels by one, ignores -100, and divides by Trainer's num_items_in_batch when given.
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})

    @classmethod
    def from_gpt2(cls, gpt2_model_or_path, **config_overrides) -> "TinyGPTForCausalLM":
        """Convert a `GPT2LMHeadModel` (object, local dir, or Hub id such as "gpt2") into a TinyGPT model.

        Names match one to one; GPT-2 keeps its Linear layers as `Conv1D` with (in, out) weights, so those are
        transposed. Dropout defaults to 0.0 (fine-tuning), override with e.g. `dropout=0.1`.
        """
        from transformers import GPT2LMHeadModel

        gpt2 = gpt2_model_or_path
        if isinstance(gpt2, (str, Path)):
            gpt2, loading = GPT2LMHeadModel.from_pretrained(gpt2, output_loading_info=True)
            if loading["missing_keys"]:  # transformers would start them from random values, and only warn
                missing = sorted(loading["missing_keys"])
                raise ValueError(f"from_gpt2: the checkpoint lacks {len(missing)} weights ({missing[0]}, ...).")
        source = gpt2.config
        activations = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}  # tanh or exact
        if source.activation_function not in activations:
            raise ValueError(f"from_gpt2: activation {source.activation_function!r} is neither of GPT-2's GELUs.")
        if source.n_inner not in (None, 4 * source.n_embd) or source.scale_attn_by_inverse_layer_idx:
            raise ValueError("from_gpt2: only the standard GPT-2 block (n_inner = 4 * n_embd) can be converted.")
        fields = dict(
            vocab_size=source.vocab_size,
            n_positions=source.n_positions,
            n_embd=source.n_embd,
            n_layer=source.n_layer,
            n_head=source.n_head,
            dropout=0.0,
            bias=True,
            activation_function=activations[source.activation_function],
            layer_norm_epsilon=source.layer_norm_epsilon,
            initializer_range=source.initializer_range,
            bos_token_id=source.bos_token_id,
            eos_token_id=source.eos_token_id,
            pad_token_id=source.pad_token_id,
        )
        fields.update(config_overrides)
        model = cls(TinyGPTConfig(**fields))
        conv1d_weights = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        state = {}
        for name, tensor in gpt2.state_dict().items():
            if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
                continue  # causal-mask buffers of old checkpoints, not weights
            state[name] = tensor.t() if name.endswith(conv1d_weights) else tensor
        model.load_state_dict(state, strict=True)
        model.tie_weights()
        return model


def causal_mask(
    attention_mask: torch.Tensor | None, past_length, T: int, key_length: int, device
) -> torch.Tensor | None:
    """The mask SDPA gets for T new tokens over key_length keys (the cache's, after its update): None where SDPA's
    own causal rule is right, else a boolean (B or 1, 1, T, key_length), True where a query may attend.

    `attention_mask` is what the caller passed: None, a 2-D padding mask (B, <= key_length) with 0 on padding, or
    a 4-D mask that is final already (generate() makes one for static caches; the engine makes its own).
    Built here in a few lines rather than with transformers' `create_causal_mask`, whose signature moved in 5.x.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    if attention_mask is None and (key_length == T or (T == 1 and key_length == past_length + 1)):
        return None  # the keys are exactly the new tokens, or the past plus one new token
    keys = torch.arange(key_length, device=device)  # (S,)
    queries = torch.arange(T, device=device) + past_length  # (T,) where the new tokens sit
    causal = keys[None, :] <= queries[:, None]  # (T, S): also hides a static cache's unwritten slots
    if attention_mask is None:
        return causal[None, None]  # (1, 1, T, S)
    not_padding = F.pad(attention_mask.bool(), (0, key_length - attention_mask.shape[-1]), value=True)  # (B, S)
    # Each query also sees itself, so a padding query (which sees no real token) gets no all-masked row (NaN).
    itself = keys[None, :] == queries[:, None]  # (T, S)
    return (causal & (not_padding[:, None, :] | itself))[:, None]  # (B, 1, T, S)


__all__ = ["TinyGPTForCausalLM", "TinyGPTModel", "TinyGPTPreTrainedModel"]
