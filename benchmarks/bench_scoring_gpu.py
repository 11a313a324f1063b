"""Deita scoring and embedding throughput on a CUDA GPU, with a 7B-shaped LLaMA in bfloat16.

The model has the shape of the released Deita scorers (LLaMA-7B: hidden 4096, 32 layers, 32 heads,
MLP 11008, vocabulary 32000) with random weights, so nothing is downloaded and the scores mean
nothing; throughput depends only on the shape. Reported: samples/s for alignsmith's batched scorer,
the reference one-prompt ``generate`` loop (on a subset) and the batched embedder, plus each one's
fraction of the GPU's dense bf16 peak with FLOPs counted as 2 * params * real (unpadded) tokens.
The batched and reference scores must agree (bf16 tolerance), or the run fails.

    python benchmarks/bench_scoring_gpu.py                  # 1024 pairs of 20-1024 tokens
    python benchmarks/bench_scoring_gpu.py --quick          # 128 pairs, 8 layers
    python benchmarks/bench_scoring_gpu.py --peak-tflops 989
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import numpy as np

from bench_scoring import reference_scores, synthetic_turns

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment.
DENSE_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(device_name: str, override: float | None) -> float:
    if override:
        return override
    for fragment, peak in DENSE_BF16_PEAK_TFLOPS.items():
        if fragment in device_name:
            return peak
    raise SystemExit(f"unknown dense bf16 peak for {device_name!r}; pass --peak-tflops")


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


def timed(fn):
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start


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
    peak = peak_tflops(device_name, args.peak_tflops) * 1e12
    tokenizer = build_tokenizer(model_max_length=args.max_tokens + 256)
    model = build_model(layers, args.max_tokens + 256, vocab_size=32000)
    params = sum(p.numel() for p in model.parameters())
    turns = synthetic_turns(tokenizer, rows, seed=0, max_tokens=args.max_tokens)
    records = [
        {"id": f"r{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]}
        for i, (q, r) in enumerate(turns)
    ]
    prompts = [render_quality(q, r) for q, r in turns]
    score_tokens = sum(len(tokenizer.encode(p)) for p in prompts)
    embed_tokens = sum(len(tokenizer.encode(render_vicuna(r))) for r in records)

    scorer = DeitaScorer.from_model(model, tokenizer, "quality", batch_size=args.batch_size)
    embedder = CausalLMEmbedder.from_model(model, tokenizer, batch_size=args.batch_size)
    scorer.score_turns(turns[: args.batch_size])  # warm-up: kernels, allocator
    embedder.embed_records(records[: args.batch_size])

    ours, score_s = timed(lambda: scorer.score_turns(turns).scores)
    _, embed_s = timed(lambda: embedder.embed_records(records))
    n_ref = min(args.reference_rows, rows)
    ref_prompts = prompts[:n_ref]
    ref, ref_s = timed(lambda: reference_scores(model, tokenizer, ref_prompts, scorer.digit_ids))
    ref_tokens = sum(len(tokenizer.encode(p)) for p in ref_prompts)
    max_diff = float(np.abs(ours[:n_ref] - ref).max())

    def row(label: str, n: int, seconds: float, tokens: int) -> str:
        mfu = 2 * params * tokens / seconds / peak
        return f"| {label:<40} | {n:>5} | {seconds:8.2f} | {n / seconds:9.1f} | {tokens / seconds:9.0f} | {100 * mfu:5.1f}% |"

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"device: {device_name}, dense bf16 peak {peak / 1e12:.0f} TFLOP/s; model: LLaMA-7B shape, {layers} layers, "
        f"{params / 1e9:.2f}B params, bf16, random weights; batch size {args.batch_size}"
    )
    print()
    print(f"| {'workload':<40} | {'rows':>5} | {'wall s':>8} | {'samples/s':>9} | {'tokens/s':>9} | {'MFU':>6} |")
    print(f"|{'-' * 42}|{'-' * 7}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    print(row("reference scorer: generate, 1 per call", n_ref, ref_s, ref_tokens))
    print(row("alignsmith scorer: one pass, batched", rows, score_s, score_tokens))
    print(row("alignsmith embedder: last token, batched", rows, embed_s, embed_tokens))
    print()
    print(f"scoring speedup over the reference: {(rows / score_s) / (n_ref / ref_s):.1f}x")
    print(f"max |score difference| vs reference on {n_ref} rows = {max_diff:.2e} (bf16 tolerance 2e-2)")
    if max_diff > 2e-2:
        print("FAIL: the batched scorer disagrees with the reference loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
