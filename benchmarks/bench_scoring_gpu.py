"""Deita scoring and embedding throughput on a CUDA GPU, with a 7B-shaped LLaMA in bfloat16.

The model has the shape of the released Deita scorers (LLaMA-7B: hidden 4096, 32 layers, 32 heads,
MLP 11008, vocabulary 32000) with random weights, so nothing is downloaded and the scores mean
nothing; throughput depends only on the shape. Reported: samples/s, tokens/s and model FLOP/s for
the reference one-prompt ``generate`` loop and alignsmith's batched scorer on the same rows (the
speedup compares those), alignsmith's scorer on all rows, and the batched embedder. Model FLOPs are
counted as benchmarks/flops.py states (decoder matmuls and causal attention over real tokens, the LM
head only where logits are computed, embeddings 0) and divided by the GPU's dense bf16 peak, looked
up by exact device name in benchmarks/hardware.py. The batched and reference scores must agree
(bf16 tolerance), or the run fails.

    python benchmarks/bench_scoring_gpu.py                  # 1024 pairs of 20-1024 tokens
    python benchmarks/bench_scoring_gpu.py --quick          # 128 pairs, 8 layers
    python benchmarks/bench_scoring_gpu.py --peak-tflops 989
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import numpy as np

from bench_scoring import print_table, reference_scores, synthetic_turns, timed
from flops import DecoderShape
from hardware import gpu_peak


def build_model(layers: int, max_positions: int, vocab_size: int):
    """A LLaMA-7B-shaped causal LM with random bf16 weights, created directly on the GPU."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 pairs and 8 layers")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=1024, help="longest synthetic pair, in tokens")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reference-rows", type=int, default=64, help="rows the slow reference loop scores")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU")
    args = parser.parse_args(argv)
    rows, layers = (128, 8) if args.quick else (args.rows, args.layers)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if not torch.cuda.is_available():
        print("bench_scoring_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from alignsmith.models.tiny import build_tokenizer
    from builders.deita.embedding import CausalLMEmbedder, render_vicuna
    from builders.deita.prompts import render_quality
    from builders.deita.scoring import DeitaScorer

    device_name = torch.cuda.get_device_name()
    peak, peak_line = gpu_peak(device_name, args.peak_tflops)
    tokenizer = build_tokenizer(model_max_length=args.max_tokens + 256)
    model = build_model(layers, args.max_tokens + 256, vocab_size=32000)
    params = sum(p.numel() for p in model.parameters())
    turns = synthetic_turns(tokenizer, rows, seed=0, max_tokens=args.max_tokens)
    records = [
        {"id": f"r{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]}
        for i, (q, r) in enumerate(turns)
    ]
    prompts = [render_quality(q, r) for q, r in turns]
    score_lengths = np.array([len(tokenizer.encode(p)) for p in prompts])
    embed_lengths = np.array([len(tokenizer.encode(render_vicuna(r))) for r in records])
    shape, decoder_shape = DecoderShape.of(model), DecoderShape.of(model.get_decoder())
    n_ref = min(args.reference_rows, rows)

    scorer = DeitaScorer.from_model(model, tokenizer, "quality", batch_size=args.batch_size)
    embedder = CausalLMEmbedder.from_model(model, tokenizer, batch_size=args.batch_size)
    # warm-up of every timed path (kernels, allocator, generate's set-up), outside the timings
    scorer.score_turns(turns[: args.batch_size])
    embedder.embed_records(records[: args.batch_size])
    reference_scores(model, tokenizer, prompts[:2], scorer.digit_ids)

    def scoring(label: str, n: int) -> tuple[str, int, int, float]:
        """Figure arguments for scoring the first ``n`` prompts: one logit position per prompt."""
        return label, n, int(score_lengths[:n].sum()), shape.prompts_flops(score_lengths[:n], logits_per_prompt=1)

    sync = torch.cuda.synchronize
    ref, ref_fig = timed(*scoring("reference scorer: generate, 1 per call", n_ref),
                         lambda: reference_scores(model, tokenizer, prompts[:n_ref], scorer.digit_ids), sync)
    ours_same, same_fig = timed(*scoring("alignsmith scorer: same rows", n_ref),
                                lambda: scorer.score_turns(turns[:n_ref]).scores, sync)
    _, all_fig = timed(*scoring("alignsmith scorer: all rows", rows), lambda: scorer.score_turns(turns).scores, sync)
    _, embed_fig = timed("alignsmith embedder: last token, batched", rows, int(embed_lengths.sum()),
                         decoder_shape.prompts_flops(embed_lengths, logits_per_prompt=0),
                         lambda: embedder.embed_records(records), sync)
    max_diff = float(np.abs(ours_same - ref).max())

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"device: {peak_line}")
    print(f"model: LLaMA-7B shape, {layers} layers, {params / 1e9:.2f}B params, bf16, random weights; "
          f"batch size {args.batch_size}; prompts {score_lengths.min()}-{score_lengths.max()} tokens "
          f"(mean {score_lengths.mean():.0f}, first {n_ref}: mean {score_lengths[:n_ref].mean():.0f})")
    print(f"FLOPs: {shape.legend()}; the scorer computes logits at one position per prompt (k = rows), the "
          f"embedder none (k = 0); the reference's second generated token is not counted")
    print()
    print_table([ref_fig, same_fig, all_fig, embed_fig], peak, 1e12, "TFLOP/s")
    print()
    print(f"scoring speedup over the reference on the same {n_ref} rows: {ref_fig.seconds / same_fig.seconds:.1f}x")
    print(f"max |score difference| vs reference on {n_ref} rows = {max_diff:.2e} (bf16 tolerance 2e-2)")
    if max_diff > 2e-2:
        print("FAIL: the batched scorer disagrees with the reference loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
