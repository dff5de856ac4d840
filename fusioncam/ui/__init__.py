"""The Gradio explorer's helpers: model cache, compute stages, figures, text and export.

Only ``app.py`` and this package import Gradio; the library itself never does.
"""
