"""tinygpt: a small GPT that lives natively in the Hugging Face ecosystem.

Importing the package registers "tinygpt" with the Auto classes, so saved models load through
`AutoConfig` / `AutoModel` / `AutoModelForCausalLM` / `AutoTokenizer` with no `trust_remote_code`. Saved
folders also carry the three model files and an `auto_map`, so machines without tinygpt load them with
`trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from tinygpt.configuration_tinygpt import TinyGPTConfig
from tinygpt.modeling_tinygpt import TinyGPTForCausalLM, TinyGPTModel, TinyGPTPreTrainedModel
from tinygpt.tokenization_tinygpt import CHAT_TEMPLATE, SPECIAL_TOKENS, TinyGPTCharTokenizer, load_gpt2_chat_tokenizer

AutoConfig.register(TinyGPTConfig.model_type, TinyGPTConfig, exist_ok=True)
AutoModel.register(TinyGPTConfig, TinyGPTModel, exist_ok=True)
AutoModelForCausalLM.register(TinyGPTConfig, TinyGPTForCausalLM, exist_ok=True)
AutoTokenizer.register(TinyGPTConfig, slow_tokenizer_class=TinyGPTCharTokenizer, exist_ok=True)

# Hub-style remote code: save_pretrained copies the defining files next to the weights and writes auto_map.
TinyGPTConfig.register_for_auto_class()
TinyGPTModel.register_for_auto_class("AutoModel")
TinyGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
TinyGPTCharTokenizer.register_for_auto_class("AutoTokenizer")

__version__ = "0.1.0"
__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TinyGPTCharTokenizer",
    "TinyGPTConfig",
    "TinyGPTForCausalLM",
    "TinyGPTModel",
    "TinyGPTPreTrainedModel",
    "load_gpt2_chat_tokenizer",
]
