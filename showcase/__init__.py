"""The Gradio app's rooms (`app.py` builds the page from them)."""
