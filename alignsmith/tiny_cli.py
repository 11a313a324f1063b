"""``alignsmith models tiny``: build a seeded tiny model and optionally publish it to the Hub.

Tiny models stand in for real ones in the demo, the tests and the benchmarks; publishing them
lets every recipe refer to models by repo id exactly as it would to real ones.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignsmith models tiny", description=__doc__)
    parser.add_argument("--out", required=True, help="Folder to save the model into.")
    parser.add_argument("--kind", choices=["causal_lm", "sentence_transformer"], default="causal_lm")
    parser.add_argument("--architecture", default="llama", help="Decoder architecture (causal_lm only).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--publish", metavar="REPO_ID", help="Also publish the folder as this model repo.")
    parser.add_argument("--tag", default=None, help="Version tag of the published model.")
    parser.add_argument("--hub", default="local", help="'local', 'huggingface' or a Hub URL.")
    parser.add_argument("--hub-root", default=None, help="Storage folder of the embedded Hub.")
    args = parser.parse_args(argv)

    from alignsmith import tiny

    if args.kind == "causal_lm":
        out = tiny.build_causal_lm(args.out, architecture=args.architecture, seed=args.seed,
                                   hidden_size=args.hidden_size, num_layers=args.num_layers)
    else:
        out = tiny.build_sentence_transformer(args.out, seed=args.seed, hidden_size=args.hidden_size,
                                              num_layers=args.num_layers)
    log.info("tiny %s saved to %s", args.kind, out)
    if args.publish:
        _publish(Path(out), args)
    return 0


def _publish(folder: Path, args: argparse.Namespace) -> None:
    from alignsmith.cards import CardContent, model_card
    from alignsmith.endpoint import connect
    from alignsmith.lineage import Lineage
    from alignsmith.publish import publish_folder
    from alignsmith.recipes import HubRecipe, OutputRepo

    connect(HubRecipe(hub=args.hub, hub_root=args.hub_root))
    output = OutputRepo(repo_id=args.publish, tag=args.tag)
    recipe = {k: v for k, v in vars(args).items() if k not in ("hub", "hub_root")}
    lineage = Lineage(command="models tiny", recipe=recipe)
    content = CardContent(
        title=f"Tiny {args.kind} ({args.architecture}, seed {args.seed})",
        summary="A randomly initialised tiny model built by `alignsmith models tiny`. It exists to exercise "
        "pipelines offline; its outputs (scores, generations) are meaningless.",
        license="apache-2.0",
        tags=["tiny", "random-weights"],
    )
    library = "sentence-transformers" if args.kind == "sentence_transformer" else "transformers"
    pipeline = "sentence-similarity" if args.kind == "sentence_transformer" else "text-generation"
    card = model_card(args.publish, content, lineage, base_model=None, library_name=library,
                      pipeline_tag=pipeline, revision_hint=args.tag or "main")
    release = publish_folder(output, folder, card, lineage)
    print(f"published {release.repo_id}@{release.commit_sha} (revision {release.revision})")
