"""Model FLOPs of a decoder-only LM, counted one way for every benchmark that reports FLOP/s.

Counting the work the model needs, not what a kernel happens to run, makes alignsmith and the
reference comparable and shows padding or wasted positions as lost utilisation. For T real tokens
(2 FLOPs per multiply-add):

* linear layers: 2·P·T, P = weights of the matmuls inside the decoder layers (attention
  projections and MLP); embedding lookups count 0 FLOPs;
* attention: 4·L·a·K, QK^T and AV (2·a FLOPs each per query-key pair) over the K causal pairs,
  K = Σ n(n+1)/2 over the sequences of n tokens that attend within themselves (a = heads ×
  head_dim, L layers): about half of the 4·L·a·n² of full attention;
* LM head: 2·d·V per position whose logits are computed (one per prompt for a scorer, the
  positions with a label for a fused-head SFT loss, none for an embedder).

A training step costs 3× its forward pass (the backward computes two products per forward product).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FORWARD = "F = 2·P·T + 4·L·a·K + 2·d·V·k"
TRAINING = "3·F"


@dataclass(frozen=True)
class DecoderShape:
    """What the FLOP count needs of a model: matmul weights per kind, layers and attention width."""

    layers: int
    layer_matmul_params: int  # P: every decoder layer's linear weights, all layers together
    attention_width: int  # a: query heads × head dim
    lm_head_params: int  # d·V; 0 for a bare decoder

    @classmethod
    def of(cls, model: Any) -> DecoderShape:
        """Read from a transformers causal LM, or its bare decoder (then the LM head counts 0)."""
        import torch

        config = model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        linear = sum(m.weight.numel() for m in model.get_decoder().layers.modules() if isinstance(m, torch.nn.Linear))
        head = model.get_output_embeddings()
        return cls(
            layers=config.num_hidden_layers,
            layer_matmul_params=linear,
            attention_width=config.num_attention_heads * head_dim,
            lm_head_params=0 if head is None else head.weight.numel(),
        )

    def forward_flops(self, tokens: Any, causal_pairs: Any, logit_positions: Any) -> Any:
        """F for T tokens, K causal query-key pairs and k logit positions (numbers or tensors alike)."""
        return (2 * self.layer_matmul_params * tokens + 4 * self.layers * self.attention_width * causal_pairs
                + 2 * self.lm_head_params * logit_positions)

    def prompts_flops(self, lengths: Any, logits_per_prompt: int) -> float:
        """F for independent prompts of these lengths, each with its own causal attention."""
        n = np.asarray(lengths, dtype=np.float64)
        return float(self.forward_flops(n.sum(), (n * (n + 1) / 2).sum(), logits_per_prompt * len(n)))

    def legend(self) -> str:
        """The formula with this model's constants, printed beside every FLOP/s figure."""
        return (f"{FORWARD} per forward pass: T real tokens (padding not counted), K = Σ n(n+1)/2 causal query-key "
                f"pairs of sequences of n tokens, k positions with logits; P = {self.layer_matmul_params:.3g} "
                f"decoder-layer matmul weights, L = {self.layers}, a = {self.attention_width}, "
                f"d·V = {self.lm_head_params:.3g}; embedding lookups 0")
