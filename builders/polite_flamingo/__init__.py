"""Polite Flamingo: build (distorted -> original) response pairs that teach a rewriter to restore polite answers."""
