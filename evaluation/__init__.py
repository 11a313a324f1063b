"""Evaluation stages: read models from the Hub, publish results to it."""
