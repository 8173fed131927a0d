"""Serving: the OpenAI-compatible API (`tinygpt serve`, and the /v1 routes inside app.py)."""
