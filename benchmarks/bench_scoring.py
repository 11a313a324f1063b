"""Deita scoring throughput: alignsmith's batched one-pass scorer vs the reference per-prompt loop.

The reference (hkust-nlp/deita, ``selection/scorer/base.py``) scores one prompt per call with
``model.generate(input_ids, max_new_tokens=2, output_scores=True, return_dict_in_generate=True)``
in float32 and reads the digit logits of the first generated position. alignsmith scores
length-sorted, padded batches with one forward pass each. Both run here on the same tiny LLaMA
(default hidden 256, 4 layers, 4 heads; random weights, so the scores themselves mean nothing) over the
same synthetic instruction/response pairs of 20-400 tokens, and must agree to 1e-4.

    python benchmarks/bench_scoring.py            # 512 pairs
    python benchmarks/bench_scoring.py --quick    # 64 pairs
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

import numpy as np

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 pairs instead of --rows")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both cores by default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)
    rows = 64 if args.quick else args.rows

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from alignsmith.models.tiny import build_causal_lm
    from builders.deita.prompts import render_quality
    from builders.deita.scoring import DeitaScorer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_causal_lm(
            tmp, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.layers, num_heads=4, num_kv_heads=4,
            intermediate_size=int(args.hidden_size * 8 / 3), max_position_embeddings=1024,
        )
        scorer = DeitaScorer(str(path), "quality", dtype="float32", device="cpu", batch_size=args.batch_size)
    turns = synthetic_turns(scorer.tokenizer, rows, args.seed)
    prompts = [render_quality(q, r) for q, r in turns]
    lengths = np.array([len(scorer.tokenizer.encode(p)) for p in prompts])
    params = sum(p.numel() for p in scorer.model.parameters())

    # warm both paths (first-call allocations), outside the timed runs
    reference_scores(scorer.model, scorer.tokenizer, prompts[:2], scorer.digit_ids)
    scorer.score_turns(turns[:2])

    start = time.perf_counter()
    ours = scorer.score_turns(turns).scores
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_scores(scorer.model, scorer.tokenizer, prompts, scorer.digit_ids)
    ref_s = time.perf_counter() - start

    max_diff = float(np.abs(ours - ref).max())
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"model: tiny llama, hidden {args.hidden_size}, {args.layers} layers, 4 heads, {params / 1e6:.2f}M params, "
        f"float32, CPU, torch threads={args.threads}; "
        f"{rows} quality prompts, {lengths.min()}-{lengths.max()} tokens (mean {lengths.mean():.0f})"
    )
    print()
    print(f"| {'method':<46} | {'wall s':>7} | {'samples/s':>9} | {'speedup':>7} |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 11}|{'-' * 9}|")
    print(f"| {'reference: generate(max_new_tokens=2), 1/call':<46} | {ref_s:7.2f} | {rows / ref_s:9.1f} | {1.0:6.1f}x |")
    label = f"alignsmith: one pass, sorted batches of {args.batch_size}"
    print(f"| {label:<46} | {ours_s:7.2f} | {rows / ours_s:9.1f} | {ref_s / ours_s:6.1f}x |")
    print()
    print(f"max |score difference| = {max_diff:.2e} (tolerance 1e-4)")
    if max_diff > 1e-4:
        print("FAIL: the batched scorer disagrees with the reference loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
