"""TinyGPT: a GPT-2-shaped decoder that is a first-class transformers model.

Read it top to bottom: attention -> MLP -> block -> model -> language-model head.

Design notes
- GPT-2 parameter names (wte, wpe, h.N.ln_1, attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, ln_f), so GPT-2
  weights load with a transpose and nothing else (`TinyGPTForCausalLM.from_gpt2`).
- Attention goes through `F.scaled_dot_product_attention`, which picks flash / memory-efficient kernels. The
  mask comes from transformers' `create_causal_mask`: it returns None when plain causal attention is enough
  (training, or decoding without padding) so SDPA takes its fastest path, and a boolean mask for left padding
  and static caches.
- KV cache: transformers `Cache` objects (DynamicCache, StaticCache). Each attention layer hands its new keys
  and values to `cache.update(k, v, layer_idx)` and attends over what comes back. `generate()` comes from
  `GenerationMixin`, so sampling, streaming, pipelines and static caches all work unchanged.
- Learned absolute positions cap the context at `n_positions`. `forward` refuses positions past it with a
  ValueError (never an index error or a device assert). `generate` slides the window instead: when prompt plus
  new tokens would not fit, it generates in chunks, each time keeping the last 3/4 of the window as context and
  re-encoding it (positions restart at 0), as nanoGPT does when it crops its context.
"""

import copy
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_tinygpt import TinyGPTConfig


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

    def forward(self, x, attention_mask=None, past_key_values: Cache | None = None):
        B, T, C = x.shape  # batch, new tokens, n_embd
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # (B, nh, T_past + T, hs)
        # No mask means "plain causal": is_causal for a block of new tokens, nothing for a single decoded token
        # (it may attend to everything cached).
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attention_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=attention_mask is None and T > 1,
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

    def forward(self, x, attention_mask=None, past_key_values=None):
        x = x + self.attn(self.ln_1(x), attention_mask, past_key_values)
        x = x + self.mlp(self.ln_2(x))
        return x


class TinyGPTPreTrainedModel(PreTrainedModel):
    """The HF contract in a few class attributes, plus GPT-2's initialisation."""

    config_class = TinyGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TinyGPTBlock"]
    _skip_keys_device_placement = ["past_key_values"]
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
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("TinyGPT: pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            if input_ids.shape[-1] == 0:
                raise ValueError("TinyGPT: input_ids is empty; pass at least one token (e.g. the <BOS> id).")
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        T = inputs_embeds.shape[1]

        if use_cache is None:  # a cache only helps generation; training never reuses it
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        if position_ids is None:
            position_ids = (torch.arange(T, device=inputs_embeds.device) + past_length).unsqueeze(0)  # (1, T)
        self._check_window(position_ids, past_length, T)

        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )  # None (plain causal) or (B, 1, T, T_past + T)

        x = self.drop(inputs_embeds + self.wpe(position_ids))  # (B, T, C)
        for block in self.h:
            x = block(x, attention_mask=mask, past_key_values=past_key_values)
        x = self.ln_f(x)
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=past_key_values if use_cache else None)

    def _check_window(self, position_ids, past_length, T):
        """A clear ValueError instead of an index error (or a CUDA device assert) in `wpe` past the window.

        Never costs a host-device sync: CPU positions are read directly; on accelerators the cache length plus
        the new tokens bounds them (positions count tokens, padding aside). Compiled graphs skip the check:
        they are only reached through generate() / FastDecoder, which keep every step inside the window.
        """
        if torch.compiler.is_compiling():
            return
        if position_ids.device.type == "cpu":
            last_position = int(position_ids.max())
        elif isinstance(past_length, int):
            last_position = past_length + T - 1
        else:  # a static cache on an accelerator: its fixed length bounds the positions
            return
        if last_position >= self.config.n_positions:
            raise ValueError(
                f"TinyGPT: position {last_position} is past the context window (n_positions="
                f"{self.config.n_positions}); pass at most {self.config.n_positions} tokens including the cache, "
                "or use generate(), which slides the window."
            )


class TinyGPTForCausalLM(TinyGPTPreTrainedModel, GenerationMixin):
    """TinyGPTModel + a language-model head tied to the token embedding."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

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
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = outputs.last_hidden_state  # (B, T, C)
        # generate() only needs the last position's logits: logits_to_keep=1 skips the head for the rest.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])  # (B, T_keep, vocab_size)
        loss = None
        if labels is not None:
            # Shifts labels by one, ignores -100, and divides by Trainer's num_items_in_batch when given.
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)

    # ------------------------------------------------------------------------------------------------------
    # Generation past the window. GenerationMixin does the sampling; this only cuts the job into chunks that
    # fit in n_positions and stitches them together.

    @torch.no_grad()
    def generate(self, inputs=None, generation_config=None, streamer=None, **kwargs):
        config = copy.deepcopy(generation_config or self.generation_config)
        model_kwargs = config.update(**kwargs)  # what is not a generation setting goes on to the model
        input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
        window = self.config.n_positions
        if input_ids is None or model_kwargs.get("inputs_embeds") is not None:
            return super().generate(inputs, generation_config=config, streamer=streamer, **model_kwargs)
        prompt_length = input_ids.shape[1]
        max_new_tokens = config.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = config.max_length - prompt_length
        if prompt_length + max_new_tokens <= window:
            return super().generate(input_ids, generation_config=config, streamer=streamer, **model_kwargs)
        if config.return_dict_in_generate or (config.num_beams or 1) > 1 or (config.num_return_sequences or 1) > 1:
            raise ValueError(
                f"TinyGPT: generating past the {window}-token window slides the context, which supports plain "
                "sampling or greedy search only; drop return_dict_in_generate/num_beams/num_return_sequences "
                f"or keep prompt + max_new_tokens <= {window}."
            )
        return self._generate_sliding(input_ids, config, streamer, max_new_tokens, model_kwargs)

    def _generate_sliding(self, input_ids, config, streamer, max_new_tokens, model_kwargs):
        window = self.config.n_positions
        attention_mask = model_kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos_ids = torch.as_tensor(
            config.eos_token_id if config.eos_token_id is not None else [], device=input_ids.device
        ).flatten()
        pad_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0].item() if len(eos_ids) else 0)
        chunk_streamer = _ContinuationStreamer(streamer) if streamer is not None else None

        sequences, mask = input_ids, attention_mask
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        remaining = max_new_tokens
        min_new_tokens = config.min_new_tokens or 0  # spread over the chunks: each gets what is still owed
        while remaining > 0:
            context = sliding_context_length(sequences.shape[1], window)
            budget = min(remaining, window - context)
            chunk_config = copy.deepcopy(config)
            chunk_config.max_new_tokens, chunk_config.max_length = budget, None
            chunk_config.min_new_tokens = min(budget, max(0, min_new_tokens - (max_new_tokens - remaining)))
            out = super().generate(
                sequences[:, -context:],
                attention_mask=mask[:, -context:],
                generation_config=chunk_config,
                streamer=chunk_streamer,
                **model_kwargs,
            )
            new_tokens = out[:, context:]  # (B, <= budget)
            new_tokens = torch.where(finished[:, None], torch.full_like(new_tokens, pad_id), new_tokens)
            sequences = torch.cat([sequences, new_tokens], dim=1)
            mask = torch.cat([mask, (~finished[:, None]).expand_as(new_tokens).to(mask.dtype)], dim=1)
            if len(eos_ids):
                finished |= torch.isin(new_tokens, eos_ids).any(dim=1)
            remaining -= new_tokens.shape[1]
            if finished.all() or new_tokens.shape[1] < budget:  # every row hit EOS or a stopping criterion
                break
        if streamer is not None:
            streamer.end()
        return sequences

    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def from_gpt2(cls, gpt2_model_or_path, **config_overrides) -> "TinyGPTForCausalLM":
        """Convert a `GPT2LMHeadModel` (object, local dir, or Hub id such as "gpt2") into a TinyGPT model.

        Names match one to one; GPT-2 keeps its Linear layers as `Conv1D` with (in, out) weights, so those are
        transposed. Dropout defaults to 0.0 (fine-tuning), override with e.g. `dropout=0.1`.
        """
        from transformers import GPT2LMHeadModel

        gpt2 = gpt2_model_or_path
        if isinstance(gpt2, (str, Path)):
            gpt2 = GPT2LMHeadModel.from_pretrained(gpt2)
        source = gpt2.config
        if source.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"from_gpt2: activation {source.activation_function!r} is not GPT-2's tanh GELU.")
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
            activation_function="gelu_new",
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


def sliding_context_length(sequence_length: int, window: int) -> int:
    """How many of the latest tokens to encode before generating more: all of them while there is room in the
    window for another token, else the last 3/4 of the window (more kept, more re-encoding per slide)."""
    return sequence_length if sequence_length < window else max(1, window * 3 // 4)


class _ContinuationStreamer:
    """Lets one streamer follow several chunked generate() calls as if they were one.

    Each generate() call first `put`s its prompt and finally calls `end()`. After the first chunk the prompt is
    text the user already saw, and only the last `end()` is real, so both are dropped here.
    """

    def __init__(self, streamer):
        self.streamer = streamer
        self.skip_next_put = False

    def put(self, value):
        if self.skip_next_put:
            self.skip_next_put = False
            return
        self.streamer.put(value)

    def end(self):
        self.skip_next_put = True  # the next call's first put is its (already streamed) prompt


__all__ = ["TinyGPTForCausalLM", "TinyGPTModel", "TinyGPTPreTrainedModel", "sliding_context_length"]
