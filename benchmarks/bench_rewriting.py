"""Rewriting throughput: `build pf-rewrite`'s batched continuation vs one prompt at a time.

The same :meth:`alignsmith.models.vision_chat.HFVisionChatModel.complete` (a tiny LLaVA-style model built
offline, random weights, so the rewrites mean nothing) continues N Polite Flamingo rewriting prompts
(:func:`builders.polite_flamingo.rewriting.rewriting_prompt` over generated instructions and drafted
responses, each with its own generated image) under greedy decoding, once per batch size. The greedy
outputs must be identical across batch sizes (left padding with an attention mask decodes each row as
it would alone); the benchmark fails otherwise. Random weights rarely emit EOS, so most rows run to
``--max-new-tokens``: the figures are throughput at a fixed length, with the load average beside them.

``--text`` adds the text rewriter: the same prompts without images through
:meth:`alignsmith.models.hf_chat.HFChatModel.complete` on a tiny LLaMA of the same shape.

    python benchmarks/bench_rewriting.py                               # 32 rows, 32 new tokens, batch 1/8/16
    python benchmarks/bench_rewriting.py --rows 64 --max-new-tokens 64 --batch-sizes 1,16,32 --text
    python benchmarks/bench_rewriting.py --device cuda --rows 512 --batch-sizes 1,16,64 --hidden-size 1024
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hardware import load_average

INSTRUCTIONS = (
    "Describe the image in detail.",
    "What is the man holding in his left hand?",
    "How many people can you see, and what are they doing?",
    "What colour is the car parked next to the building?",
    "Write a short caption for this picture.",
    "Is it safe to swim in the water shown here? Explain why.",
    "What time of day does the photo seem to be taken?",
    "Summarize what is happening in the scene.",
)
DRAFT_SENTENCES = (
    "The image shows a busy street with several people walking.",
    "a dog. brown.",
    "There is a red car next to a tall grey building.",
    "Yes.",
    "The sky is blue and the sun is low, so it is probably late afternoon.",
    "I'm sorry, but I can't help with that request.",
    "Two children are playing with a ball on the grass near a lake.",
    "The man holds an umbrella and a small paper bag.",
    "Sure! Here is a detailed, step-by-step answer to your question.",
    "the water look calm but there are rocks",
)


def rewriting_rows(count: int, seed: int = 0) -> tuple[list[str], list[list]]:
    """``count`` rewriting prompts (``<image>`` + instruction, drafted response of 1-4 sentences) and images."""
    import numpy as np
    from PIL import Image

    from builders.polite_flamingo.rewriting import rewriting_prompt

    rng = random.Random(seed)
    prompts, images = [], []
    for i in range(count):
        instruction = "<image>\n" + rng.choice(INSTRUCTIONS)
        drafted = " ".join(rng.choice(DRAFT_SENTENCES) for _ in range(rng.randint(1, 4)))
        prompts.append(rewriting_prompt(instruction, drafted, "paper"))
        pixels = np.random.default_rng([seed, i]).integers(0, 256, size=(40 + i % 9, 48, 3), dtype=np.uint8)
        images.append([Image.fromarray(pixels)])
    return prompts, images


def run_sizes(label: str, run: Callable[[int, int | None], list], batch_sizes: Sequence[int], rows: int,
              device: str) -> list[tuple[int, float, float]]:
    """Time ``run(batch_size, limit)`` (all rows when limit is None) per batch size after a one-batch warm-up.

    Returns (batch size, rows/s, new tokens/s); fails if any batch size's texts differ from the first's.
    """
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    figures, first = [], None
    for size in batch_sizes:
        run(size, min(size, rows))  # warm-up: one batch of this size
        sync()
        start = time.perf_counter()
        out = run(size, None)
        sync()
        seconds = time.perf_counter() - start
        texts = [c.text for c in out]
        tokens = sum(c.completion_tokens for c in out)
        prompt_tokens = sum(c.prompt_tokens for c in out)
        if first is None:
            first = (size, texts)
        else:
            differ = [i for i, (a, b) in enumerate(zip(first[1], texts)) if a != b]
            assert not differ, (f"{label}: greedy rewrites with batch size {size} differ from batch size "
                                f"{first[0]} at rows {differ[:10]}")
        figures.append((size, rows / seconds, tokens / seconds))
        print(f"{label:<6} batch {size:>3}: {rows} rows ({prompt_tokens} prompt tokens), {tokens} new tokens in "
              f"{seconds:.2f} s: {rows / seconds:.2f} rows/s, {tokens / seconds:.1f} tokens/s "
              f"(load {load_average()})", flush=True)
    return figures


def table(label: str, figures: list[tuple[int, float, float]]) -> None:
    base = figures[0][1]
    print(f"\n| {label} batch size | rows/s | new tokens/s | speedup vs batch {figures[0][0]} |")
    print("|---|---|---|---|")
    for size, rows_s, tokens_s in figures:
        print(f"| {size} | {rows_s:.2f} | {tokens_s:.1f} | {rows_s / base:.1f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,16", help="comma-separated; the first is the baseline")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16 or auto")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--model", help="a real image-text-to-text model (Hub id or folder) instead of the tiny one")
    parser.add_argument("--text", action="store_true", help="also time the text rewriter (HFChatModel.complete)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    import torch

    from alignsmith.models.generation import DecodingSettings
    from alignsmith.models.hf_chat import HFChatModel
    from alignsmith.models.tiny import build_causal_lm, build_vision_language_model
    from alignsmith.models.vision_chat import HFVisionChatModel

    torch.set_num_threads(args.threads)
    prompts, images = rewriting_rows(args.rows)
    where = (f"{torch.cuda.get_device_name()}" if args.device.startswith("cuda")
             else f"cpu, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_vision_language_model(
            Path(tmp) / "vlm", hidden_size=args.hidden_size, num_layers=args.layers, seed=0))
        generator = HFVisionChatModel(model, dtype=args.dtype, device=args.device, batch_size=1)
        params = sum(p.numel() for p in generator.model.parameters())
        shape = (args.model if args.model else
                 f"tiny LLaVA, hidden {args.hidden_size}, {args.layers} layers")
        print(f"{shape}, {params / 1e6:.1f}M params, {args.dtype}, {where}; {args.rows} rewriting prompts, "
              f"greedy, {args.max_new_tokens} new tokens", flush=True)
        greedy = DecodingSettings(temperature=0.0, max_new_tokens=args.max_new_tokens)

        def run_vision(size: int, limit: int | None) -> list:
            generator.batch_size = size
            n = args.rows if limit is None else limit
            return generator.complete(prompts[:n], images[:n], greedy)

        results = {"vision": run_sizes("vision", run_vision, sizes, args.rows, args.device)}

        if args.text:
            folder = build_causal_lm(Path(tmp) / "lm", hidden_size=args.hidden_size, num_layers=args.layers,
                                     max_position_embeddings=2048, seed=0)
            chat = HFChatModel(str(folder), dtype=args.dtype, device=args.device, batch_size=1)
            texts = [p.replace("<image>\n", "") for p in prompts]

            def run_text(size: int, limit: int | None) -> list:
                chat.batch_size = size
                return chat.complete(texts[: args.rows if limit is None else limit], greedy)

            results["text"] = run_sizes("text", run_text, sizes, args.rows, args.device)

    for label, figures in results.items():
        table(label, figures)
    print(f"\nidentical greedy rewrites across batch sizes {sizes} "
          f"(python {shlex.join(sys.argv)}, {where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
