"""Gradio Spaces that demo published models next to their evaluation results."""
