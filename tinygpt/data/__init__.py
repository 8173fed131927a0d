"""Data: text corpora, chat files and the loss masks, tokenizers built for training, the token stream, and the
built-in synthetic chat corpus. It sits just above the model contract and imports nothing else of tinygpt's."""
