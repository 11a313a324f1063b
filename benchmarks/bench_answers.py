"""Answer-generation throughput: `eval answers`' batched generation vs one prompt at a time.

Both run the same tiny LLaMA (default hidden 256, 4 layers; random weights, so the answers mean
nothing) through :class:`alignsmith.models.hf_chat.HFChatModel` under greedy decoding, on MT-Bench's
first-turn questions, and must return identical answers: left padding with an attention mask makes
each row decode as it would alone. Random weights rarely emit the end of turn, so most answers run to
``max_new_tokens``: the figure is decoding throughput at a fixed length, the load average beside it.

    python benchmarks/bench_answers.py                      # 32 questions, 64 new tokens, batch 16
    python benchmarks/bench_answers.py --questions 80 --max-new-tokens 128 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from batching import compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)

    import torch

    from alignsmith.models.tiny import build_causal_lm
    from evaluation.answers import mt_bench, turn_messages

    torch.set_num_threads(args.threads)
    conversations = [turn_messages(q, 1, []) for q in mt_bench().questions[: args.questions]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_causal_lm(Path(tmp) / "tiny", hidden_size=args.hidden_size, num_layers=args.layers,
                                 max_position_embeddings=2048, seed=0)
        compare(folder, conversations, "generate", args.max_new_tokens, args.batch_size, "answers", args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
