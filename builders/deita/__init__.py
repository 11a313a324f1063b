"""Deita: score, embed and select a small, diverse, high-quality instruction subset."""
