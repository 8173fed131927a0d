"""The Gradio app (`tinygpt app`, `python app.py`): streaming chat, model picking, Hub pull and push, the Train tab
and its runs."""
