"""Deita scoring throughput: alignsmith's batched one-pass scorer vs the reference per-prompt loop.

The reference (hkust-nlp/deita, ``selection/scorer/base.py``) scores one prompt per call with
``model.generate(input_ids, max_new_tokens=2, output_scores=True, return_dict_in_generate=True)``
in float32 and reads the digit logits of the first generated position. alignsmith scores
length-sorted, padded batches with one forward pass each. Both run here on the same tiny LLaMA
(default hidden 256, 4 layers, 4 heads; random weights, so the scores themselves mean nothing) over the
same synthetic instruction/response pairs of 20-400 tokens, and must agree to 1e-4.

Besides samples/s, each method's model FLOP/s (benchmarks/flops.py: the work a forward pass needs,
the same count for both) is compared with this machine's fp32 matmul peak, measured in the same run
at the same thread count, so the distance to the physical limit shows, not only the ratio against the
slow reference. The ratio swings with the load of the shared cores: every figure carries the load
average read right after it. The tiny default shape is overhead-bound; a wider one shows how close
batched scoring gets to the matmul peak once the matmuls are large enough to be efficient.

    python benchmarks/bench_scoring.py                                            # 512 pairs, hidden 256
    python benchmarks/bench_scoring.py --quick                                    # 64 pairs
    python benchmarks/bench_scoring.py --hidden-size 1024 --layers 4 --rows 128   # matmul-efficient shape
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from flops import DecoderShape
from hardware import cpu_matmul_peak, fraction_of_peak, load_average

T = TypeVar("T")
PEAK_MATMUL_SIZE = 2048  # float32 operands of 16 MiB each: large enough for the BLAS to reach its peak

WORDS = (
    "the of and to in is that for it as with was on be by this are from or an which at not but have "
    "explain describe write compare list summarize why how what when where code python function data model "
    "energy climate history science music language health market city water light system network user value "
    "result example detail step answer question because therefore however first second finally important "
    "12 2024 3.5 {x} (note) [1] café naïve"
).split()


def synthetic_turns(tokenizer, n: int, seed: int, min_tokens: int = 20, max_tokens: int = 400) -> list[tuple[str, str]]:
    """Instruction/response pairs whose joint token length is log-uniform in [min_tokens, max_tokens]."""
    rng = np.random.default_rng(seed)
    turns = []
    for target in np.exp(rng.uniform(np.log(min_tokens), np.log(max_tokens), n)).astype(int):
        words = " ".join(rng.choice(WORDS, size=int(target)))  # at least one token per word
        text = tokenizer.decode(tokenizer.encode(words, add_special_tokens=False, truncation=True, max_length=int(target)))
        cut = max(1, int(len(text) * rng.uniform(0.1, 0.4)))  # the instruction is the shorter part
        split = text.find(" ", cut)
        split = split if split > 0 else cut
        turns.append((text[:split].strip() or "hi", text[split:].strip() or "ok"))
    return turns


def reference_scores(model, tokenizer, prompts: list[str], digit_ids: list[int]) -> np.ndarray:
    """The reference scorer loop, restated: one ``generate`` per prompt, softmax over six logits."""
    import torch

    scores = []
    for prompt in prompts:
        input_ids = tokenizer.encode(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            outputs = model.generate(
                input_ids, max_new_tokens=2, num_return_sequences=1, return_dict_in_generate=True, output_scores=True
            )
        logits = outputs.scores[0][0]
        score_logits = np.array([logits[k].item() for k in digit_ids])
        probs = np.exp(score_logits - score_logits.max())
        probs /= probs.sum()
        scores.append(float(np.sum(probs * np.arange(1, 7))))
    return np.array(scores)


@dataclass(frozen=True)
class Figure:
    """One timed workload, with what its rates and FLOP/s are computed from and the load it ran under."""

    label: str
    rows: int
    seconds: float
    tokens: int
    flops: float
    load: str


def timed(
    label: str, rows: int, tokens: int, flops: float, fn: Callable[[], T], sync: Callable[[], None] = lambda: None
) -> tuple[T, Figure]:
    """Run ``fn`` once; ``sync`` waits for queued device work at both ends (a GPU's kernels)."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    seconds = time.perf_counter() - start
    return result, Figure(label, rows, seconds, tokens, flops, load_average())


def print_table(figures: list[Figure], peak: float | None, unit: float, unit_name: str) -> None:
    """Markdown rows: samples/s, tokens/s, model FLOP/s in ``unit_name`` and its fraction of ``peak``."""
    print(f"| {'workload':<46} | {'rows':>5} | {'wall s':>8} | {'samples/s':>9} | {'tokens/s':>9} "
          f"| {unit_name + ' (F)':>12} | {'of peak':>7} | {'load 1/5/15 min':>15} |")
    print("|" + "|".join("-" * (w + 2) for w in (46, 5, 8, 9, 9, 12, 7, 15)) + "|")
    for f in figures:
        rate = f.flops / f.seconds
        print(f"| {f.label:<46} | {f.rows:>5} | {f.seconds:8.2f} | {f.rows / f.seconds:9.1f} "
              f"| {f.tokens / f.seconds:9.0f} | {rate / unit:12.2f} | {fraction_of_peak(rate, peak):>7} "
              f"| {f.load:>15} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 pairs instead of --rows")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both cores by default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: hidden / 64, at least 4)")
    args = parser.parse_args(argv)
    rows = 64 if args.quick else args.rows
    heads = args.heads or max(4, args.hidden_size // 64)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from alignsmith.models.tiny import build_causal_lm
    from builders.deita.prompts import render_quality
    from builders.deita.scoring import DeitaScorer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_causal_lm(
            tmp, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.layers, num_heads=heads,
            num_kv_heads=heads, intermediate_size=int(args.hidden_size * 8 / 3), max_position_embeddings=1024,
        )
        scorer = DeitaScorer(str(path), "quality", dtype="float32", device="cpu", batch_size=args.batch_size)
    turns = synthetic_turns(scorer.tokenizer, rows, args.seed)
    prompts = [render_quality(q, r) for q, r in turns]
    lengths = np.array([len(scorer.tokenizer.encode(p)) for p in prompts])
    params = sum(p.numel() for p in scorer.model.parameters())
    shape = DecoderShape.of(scorer.model)
    flops = shape.prompts_flops(lengths, logits_per_prompt=1)  # the same useful work for both methods
    tokens = int(lengths.sum())

    peak_before, load_before = cpu_matmul_peak("float32", PEAK_MATMUL_SIZE), load_average()
    # warm both paths (first-call allocations), outside the timed runs
    reference_scores(scorer.model, scorer.tokenizer, prompts[:2], scorer.digit_ids)
    scorer.score_turns(turns[:2])

    label = f"alignsmith: one pass, sorted batches of {args.batch_size}"
    ours, ours_fig = timed(label, rows, tokens, flops, lambda: scorer.score_turns(turns).scores)
    ref, ref_fig = timed("reference: generate(max_new_tokens=2), 1/call", rows, tokens, flops,
                         lambda: reference_scores(scorer.model, scorer.tokenizer, prompts, scorer.digit_ids))
    peak_after, load_after = cpu_matmul_peak("float32", PEAK_MATMUL_SIZE), load_average()
    peak = max(peak_before, peak_after)  # the nearer to the physical limit, as load comes and goes

    max_diff = float(np.abs(ours - ref).max())
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"model: tiny llama, hidden {args.hidden_size}, {args.layers} layers, {heads} heads, "
        f"{params / 1e6:.2f}M params, "
        f"float32, CPU, torch threads={torch.get_num_threads()}; "
        f"{rows} quality prompts, {lengths.min()}-{lengths.max()} tokens (mean {lengths.mean():.0f})"
    )
    print(f"peak: {PEAK_MATMUL_SIZE}x{PEAK_MATMUL_SIZE} float32 torch.matmul at the same {torch.get_num_threads()} "
          f"threads, best of 5, before and after the timed runs: {peak_before / 1e9:.1f} GFLOP/s (load {load_before}) "
          f"and {peak_after / 1e9:.1f} GFLOP/s (load {load_after}); the higher is the peak")
    print(f"FLOPs: {shape.legend()}; the same F for both methods (the reference's second generated token not counted)")
    print()
    print_table([ref_fig, ours_fig], peak, 1e9, "GFLOP/s")
    print()
    print(f"speedup over the reference on the same {rows} rows: {ref_fig.seconds / ours_fig.seconds:.1f}x")
    print(f"max |score difference| = {max_diff:.2e} (tolerance 1e-4)")
    if max_diff > 1e-4:
        print("FAIL: the batched scorer disagrees with the reference loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
