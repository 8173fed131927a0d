"""The Hub and the model folder: the one loader (a folder or a repo id -> a checked model), its checks, pull,
push, the model card, GPT-2 and GGUF export, and the Space."""
