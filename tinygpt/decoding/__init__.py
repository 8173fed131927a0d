"""Decoding: the engine every text comes out of, its requests, sampling, slot cache, scheduler, CUDA graphs and
int8 weights, and `ChatModel`, the chat on top that every surface shares."""
