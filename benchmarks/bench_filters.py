"""PF-1M filter throughput: rows/s of each scorer alone, then of the whole cascade (`filter_rows`).

N generated rows (half captions of 1-3 paragraphs, half VQA answers, each with its own image) go
through each scorer of :mod:`alignsmith.models.scorers` separately, after a warm-up on the first
rows (best of ``--repeats`` timed runs): ROUGE-L (the change filter), STS, NLI, CLIPScore per
paragraph, and the reward model, every scorer on all N rows. Then
:func:`builders.polite_flamingo.filters.filter_rows` runs the cascade on the same rows, where each
model sees only its branch (STS and CLIP captions, NLI VQA rows, the reward the survivors).

By default the models are tiny ones built offline (random weights, so the scores mean nothing) and the
cascade runs with pass-everything thresholds, so every stage sees every row of its branch;
``--published-thresholds`` uses :class:`FilterSettings`' defaults instead. For a GPU run pass real
models (Hub ids or folders, pinned as the builder pins them), e.g. the paper's::

    python benchmarks/bench_filters.py                          # 256 rows, tiny models, cpu
    python benchmarks/bench_filters.py --device cuda --rows 4096 --published-thresholds \\
        --sts-model sentence-transformers/all-mpnet-base-v2 --nli-model cross-encoder/nli-deberta-v3-base \\
        --reward-model OpenAssistant/reward-model-deberta-v3-large-v2 --clip-model openai/clip-vit-large-patch14-336
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hardware import load_average

SENTENCES = (
    "The image shows a busy street with several people walking past small shops",
    "A brown dog sits on the grass next to a red ball",
    "There is a red car parked next to a tall grey building",
    "The sky is blue and the sun is low, so it is probably late afternoon",
    "Two children are playing near a calm lake surrounded by trees",
    "A man in a dark coat holds an umbrella and a small paper bag",
    "On the table there are three cups, a plate of bread and a vase of flowers",
    "In the background, mountains covered with snow rise above a small village",
    "The water looks calm, but a few rocks are visible close to the shore",
    "A cyclist waits at the traffic light while a bus passes by",
)
QUESTIONS = (
    "Describe the image in detail.",
    "What is the man holding in his left hand?",
    "How many people can you see, and what are they doing?",
    "What colour is the car parked next to the building?",
    "Is it safe to swim in the water shown here?",
)


def generated_rows(count: int, seed: int = 0) -> list[dict]:
    """Even rows captions (1-3 paragraphs of 2-4 sentences), odd rows VQA answers (1-3 sentences)."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)

    def sentences(low: int, high: int) -> str:  # "in scene i": no two rows share a CLIP piece
        return " ".join(f"{rng.choice(SENTENCES)} in scene {i}." for _ in range(rng.randint(low, high)))

    rows = []
    for i in range(count):
        pixels = np.random.default_rng([seed, i]).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i % 2 == 0:
            output = "\n\n".join(sentences(2, 4) for _ in range(rng.randint(1, 3)))
            rows.append({"instruction": "<image>\n" + QUESTIONS[0], "original": sentences(1, 2), "output": output,
                         "images": [image], "task": "caption"})
        else:
            rows.append({"instruction": "<image>\n" + rng.choice(QUESTIONS[1:]), "original": sentences(1, 1),
                         "output": sentences(1, 3), "images": [image], "task": "vqa"})
    return rows


def timed(call: Callable[[list[dict]], object], rows: list[dict], warmup: int, repeats: int) -> float:
    """Best seconds of ``repeats`` runs of ``call(rows)``, after ``call(rows[:warmup])``: on shared cores the
    fastest run is the one least disturbed by other jobs."""
    call(rows[:warmup])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call(rows)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32",
                        help="of the NLI, reward and CLIP models (float32, as the builder)")
    parser.add_argument("--hidden-size", type=int, default=128, help="of the tiny models")
    parser.add_argument("--layers", type=int, default=2, help="of the tiny models")
    parser.add_argument("--sts-model", help="real sentence-transformers model instead of the tiny one")
    parser.add_argument("--nli-model", help="real 3-way NLI cross-encoder instead of the tiny one")
    parser.add_argument("--reward-model", help="real single-label reward model instead of the tiny one")
    parser.add_argument("--clip-model", help="real CLIP-style dual encoder instead of the tiny one")
    parser.add_argument("--published-thresholds", action="store_true",
                        help="cascade with FilterSettings' defaults (default: thresholds that keep every row)")
    parser.add_argument("--warmup", type=int, default=16, help="rows each scorer sees before it is timed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage; the best is reported")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)

    import torch

    from alignsmith.models import tiny
    from alignsmith.models.scorers import (
        ClipScorer, NliScorer, RewardScorer, StsScorer, question_text, rouge_l, split_paragraphs,
    )
    from builders.polite_flamingo.filters import FilterSettings, filter_rows

    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {args.threads} thread(s)"
    rows = generated_rows(args.rows)
    n = len(rows)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shape = dict(hidden_size=args.hidden_size, num_layers=args.layers)
        sts_model = args.sts_model or str(tiny.build_sentence_transformer(root / "sts", **shape))
        nli_model = args.nli_model or str(tiny.build_sequence_classifier(
            root / "nli", num_labels=3, id2label=["contradiction", "entailment", "neutral"], **shape))
        reward_model = args.reward_model or str(tiny.build_sequence_classifier(root / "reward", num_labels=1,
                                                                              seed=1, **shape))
        clip_model = args.clip_model or str(tiny.build_clip_model(root / "clip", **shape))
        options = dict(dtype=args.dtype, device=args.device)
        sts = StsScorer(sts_model, device=args.device)
        nli = NliScorer(nli_model, **options)
        reward = RewardScorer(reward_model, **options)
        clip = ClipScorer(clip_model, **options)

    tiny_note = f"tiny models, hidden {args.hidden_size}, {args.layers} layers" if not all(
        (args.sts_model, args.nli_model, args.reward_model, args.clip_model)) else "real models"
    paragraphs = sum(len(split_paragraphs(r["output"])) for r in rows)
    print(f"{n} rows ({sum(r['task'] == 'caption' for r in rows)} captions, {paragraphs} paragraphs), "
          f"{tiny_note}, {args.dtype}, {where}", flush=True)

    stages: list[tuple[str, str, Callable[[list[dict]], object]]] = [
        ("rouge_l (change)", "-", lambda rs: [rouge_l(r["output"], r["original"]) for r in rs]),
        ("STS", sts.model_ref.repo_id, lambda rs: sts.similarity([r["output"] for r in rs],
                                                                  [r["original"] for r in rs])),
        ("NLI", nli.model_ref.repo_id, lambda rs: nli.logits([question_text(r["instruction"]) for r in rs],
                                                              [r["output"] for r in rs], [r["original"] for r in rs])),
        ("CLIP per paragraph", clip.model_ref.repo_id,
         lambda rs: clip.paragraph_scores([split_paragraphs(r["output"]) for r in rs], [r["images"][0] for r in rs])),
        ("reward", reward.model_ref.repo_id, lambda rs: reward.scores([question_text(r["instruction"]) for r in rs],
                                                                       [r["output"] for r in rs])),
    ]
    settings = FilterSettings() if args.published_thresholds else FilterSettings(
        min_chars=0, sts_min=float("-inf"), nli_drop_labels=(), clip_min=float("-inf"))
    results = []
    for name, model, call in stages:
        seconds = timed(call, rows, args.warmup, args.repeats)
        results.append((name, model, seconds))
        print(f"{name:<20} {n} rows in {seconds:.3f} s (best of {args.repeats}): {n / seconds:,.1f} rows/s "
              f"(load {load_average()})", flush=True)
    outcome: list = []
    seconds = timed(lambda rs: outcome.append(filter_rows(rs, settings, sts=sts, nli=nli, clip=clip, reward=reward)),
                    rows, args.warmup, args.repeats)
    result = outcome[-1]
    drops = Counter(d.filter for d in result.dropped)
    print(f"{'cascade':<20} {n} rows in {seconds:.3f} s: {n / seconds:,.1f} rows/s, kept {len(result.kept)}, "
          f"dropped {dict(drops) or 0} (load {load_average()})", flush=True)

    print("\n| filter | model | seconds | rows/s |")
    print("|---|---|---|---|")
    for name, model, stage_seconds in results:
        label = Path(model).name if model != "-" and Path(model).is_absolute() else model
        print(f"| {name} | {label} | {stage_seconds:.3f} | {n / stage_seconds:,.1f} |")
    thresholds = "published thresholds" if args.published_thresholds else "pass-all thresholds"
    print(f"| cascade (`filter_rows`, {thresholds}) | all | {seconds:.3f} | {n / seconds:,.1f} |")
    print(f"\n(python {shlex.join(sys.argv)}, {where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
