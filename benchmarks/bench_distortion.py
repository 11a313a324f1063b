"""LLM-instructed distortion throughput: `build pf-pairs`' batched continuation vs one prompt at a time.

Both run the same tiny LLaMA (random weights, so the distortions mean nothing) through
:meth:`alignsmith.models.hf_chat.HFChatModel.complete` on Guanaco distortion prompts built from the
bundled HH-RLHF pool (first turn pairs), under greedy decoding, and must return identical
continuations. The Guanaco prompt is long (about 600 tiny-tokenizer tokens before the response), so
this measures prefill as much as decoding.

    python benchmarks/bench_distortion.py                     # 16 prompts, 32 new tokens, batch 8
    python benchmarks/bench_distortion.py --prompts 64 --max-new-tokens 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from batching import compare

POOL = Path(__file__).resolve().parents[1] / "data" / "hh_rlhf" / "pool.jsonl"


def guanaco_prompts(count: int, max_chars: int) -> list[str]:
    """The distortion prompt of the first (user, assistant) pair of the pool's first ``count`` rows."""
    from alignsmith.seeding import row_rng
    from builders.polite_flamingo.distortions import llm_instructed_prompt

    prompts = []
    with open(POOL, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            turns = row["conversations"]
            prompts.append(llm_instructed_prompt(turns[0]["value"][:max_chars], turns[1]["value"][:max_chars],
                                                 row_rng(0, row["id"]))[0])
            if len(prompts) == count:
                return prompts
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-chars", type=int, default=400, help="cut instruction and response to this many chars")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)

    import torch

    from alignsmith.models.tiny import build_causal_lm

    torch.set_num_threads(args.threads)
    prompts = guanaco_prompts(args.prompts, args.max_chars)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_causal_lm(Path(tmp) / "tiny", hidden_size=args.hidden_size, num_layers=args.layers,
                                 max_position_embeddings=4096, seed=0)
        compare(folder, prompts, "complete", args.max_new_tokens, args.batch_size, "prompts", args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
