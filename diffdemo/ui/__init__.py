"""The Gradio Blocks app: one tab per task, all calling the same loaded models. No torch here."""
from diffdemo.ui.app import build_demo

__all__ = ["build_demo"]
