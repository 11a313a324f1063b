"""The batched-versus-one-at-a-time comparison shared by the generation benchmarks.

One tiny model folder, the same inputs through ``HFChatModel.generate`` (conversations) or
``complete`` (raw prompts) with batch size 1 and ``batch_size``, greedy: both must return identical
texts (left padding with an attention mask decodes every row as it would alone), and the figures are
printed with the load average beside them.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from hardware import load_average


def compare(folder: Path, inputs: Sequence[Any], call: Literal["generate", "complete"], max_new_tokens: int,
            batch_size: int, unit: str, threads: int) -> None:
    """Print throughput one at a time and batched, then the speedup; fail if the outputs differ."""
    from alignsmith.models.generation import DecodingSettings
    from alignsmith.models.hf_chat import HFChatModel

    greedy = DecodingSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    results = {}
    for name, size in (("one at a time", 1), (f"batched ({batch_size})", batch_size)):
        model = HFChatModel(str(folder), dtype="float32", device="cpu", batch_size=size)
        run = getattr(model, call)
        run(list(inputs[:1]), greedy)  # warm-up
        start = time.perf_counter()
        completions = run(list(inputs), greedy)
        seconds = time.perf_counter() - start
        tokens = sum(c.completion_tokens for c in completions)
        prompt_tokens = sum(c.prompt_tokens for c in completions)
        results[name] = ([c.text for c in completions], seconds)
        print(f"{name:<16} {len(inputs)} {unit} ({prompt_tokens} prompt tokens), {tokens} new tokens in "
              f"{seconds:.2f} s: {len(inputs) / seconds:.2f} {unit}/s, {tokens / seconds:.1f} tokens/s "
              f"(load {load_average()})")
    (single, t_single), (batched, t_batched) = results.values()
    assert single == batched, f"batched greedy {unit} differ from one-at-a-time {unit}"
    print(f"identical {unit}; batched is {t_single / t_batched:.1f}x faster "
          f"(python {shlex.join(sys.argv)}, {threads} thread(s))")
