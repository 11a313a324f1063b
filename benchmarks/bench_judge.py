"""Judge throughput with and without the judge cache: the same MT-Bench judge requests, asked cold, then again.

The judge is a tiny LLaMA (random weights, so its judgments mean nothing) run greedily through
:class:`alignsmith.models.hf_chat.HFChatModel`; the requests are FastChat's single-answer judge prompts
(:func:`evaluation.judging.mtbench_requests`) over fake answers to MT-Bench's first questions, both turns.
Both passes go through :func:`evaluation.judging.ask_judge`, as ``eval judge`` does: the first with an
empty cache (every request generated and stored), the second with the same cache file (every request
served from SQLite). Both must return identical judgments. A real judge is far slower than this tiny
one, so the ratio printed is a floor on what the cache saves; the load average is printed beside it.

    python benchmarks/bench_judge.py                        # 8 questions x 2 turns, 16 new tokens, batch 8
    python benchmarks/bench_judge.py --questions 40 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from hardware import load_average


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)

    import torch

    from alignsmith.lineage import content_sha256
    from alignsmith.models.generation import DecodingSettings
    from alignsmith.models.hf_chat import HFChatModel
    from alignsmith.models.tiny import build_causal_lm
    from evaluation.answers import mt_bench, turn_messages
    from evaluation.judge_cache import JudgeCache, JudgeIdentity
    from evaluation.judging import AnswerRow, ask_judge, mtbench_requests, verdicts

    torch.set_num_threads(args.threads)
    def fake(question_id: str, turn: int) -> str:
        return f"A fake answer to turn {turn} of question {question_id}."

    rows = [AnswerRow(q.question_id, turn, q.category, turn_messages(q, turn, [fake(q.question_id, 1)]),
                      fake(q.question_id, turn), "bench/fake-answerer", None, None, f"question {q.question_id}")
            for q in mt_bench().questions[: args.questions] for turn in (1, 2)]
    requests = mtbench_requests(rows)
    greedy = DecodingSettings(temperature=0.0, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_causal_lm(Path(tmp) / "tiny-judge", hidden_size=args.hidden_size, num_layers=args.layers,
                                 max_position_embeddings=4096, seed=0)
        judge = HFChatModel(str(folder), dtype="float32", device="cpu", batch_size=args.batch_size)
        judge.generate([requests[0].messages], greedy)  # warm-up
        identity = JudgeIdentity(repo_id=folder.name, revision=content_sha256(folder))  # a local folder's pin
        verdict, decoding = verdicts(judge, "generate", greedy)
        results = {}
        for name in ("cold (judge asked)", "cached"):
            with JudgeCache(Path(tmp) / "judge_cache.sqlite") as cache:
                start = time.perf_counter()
                calls = ask_judge(verdict, identity, cache, requests, decoding, args.batch_size)
                seconds = time.perf_counter() - start
            results[name] = (calls.texts, seconds)
            print(f"{name:<19} {len(requests)} judgments ({calls.asked} asked, {calls.cached} cached) in "
                  f"{seconds:.3f} s: {len(requests) / seconds:.1f} judgments/s (load {load_average()})")
    (cold, t_cold), (cached, t_cached) = results.values()
    assert cold == cached, "cached judgments differ from the judge's"
    print(f"identical judgments; the cache is {t_cold / t_cached:.0f}x faster "
          f"(python {shlex.join(sys.argv)}, {args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
