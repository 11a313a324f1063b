"""Derive alignsmith's bundled HH-RLHF demo data from Anthropic's harmless-base test split (MIT).

* ``pool.jsonl``: the chosen dialogues of the first POOL_SIZE pairs that pass validation, as
  ShareGPT conversations (``{"id", "conversations": [{"from": "human"|"gpt", "value"}]}``).
* ``preferences.jsonl``: the next PREFERENCE_SIZE valid pairs in the original HH format (the
  ``chosen``/``rejected`` transcripts byte for byte) plus an ``id``, so DPO demos train on
  prompts the pool does not contain.

Ids are ``hh-harmless-base-test-NNNN``, NNNN being the line number (from 0) in the source file.
Run from the repository root: ``python data/hh_rlhf/derive.py`` (``--source`` to point elsewhere).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from alignsmith.converters import convert_rows

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1].parent / "shared" / "data" / "preferences" / "hh_rlhf" / "harmless-base_test.jsonl.gz"
POOL_SIZE = 600
PREFERENCE_SIZE = 300
SHAREGPT_SPEAKERS = {"user": "human", "assistant": "gpt"}


def read_pairs(source: Path) -> list[dict]:
    with gzip.open(source, "rt", encoding="utf-8") as lines:
        return [{"id": f"hh-harmless-base-test-{i:04d}", **json.loads(line)} for i, line in enumerate(lines)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="harmless-base test.jsonl.gz")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    pairs = read_pairs(args.source)
    result = convert_rows(
        pairs, kind="conversation", fmt="hh_rlhf", source="hh-rlhf-harmless-base-test", on_invalid="reject"
    )
    valid = result.records[: POOL_SIZE + PREFERENCE_SIZE]
    if len(valid) < POOL_SIZE + PREFERENCE_SIZE:
        raise SystemExit(f"only {len(valid)} valid pairs in {args.source}")
    pool = [
        {
            "id": r["id"],
            "conversations": [{"from": SHAREGPT_SPEAKERS[m["role"]], "value": m["content"]} for m in r["messages"]],
        }
        for r in valid[:POOL_SIZE]
    ]
    by_id = {pair["id"]: pair for pair in pairs}
    preferences = [by_id[r["id"]] for r in valid[POOL_SIZE:]]
    write_jsonl(args.out / "pool.jsonl", pool)
    write_jsonl(args.out / "preferences.jsonl", preferences)

    last_line = int(preferences[-1]["id"].rsplit("-", 1)[1])
    skipped = [r for r in result.rejected if r["row_index"] <= last_line]
    print(f"pool.jsonl: {len(pool)} conversations; preferences.jsonl: {len(preferences)} pairs")
    print(f"read lines 0..{last_line}; skipped {len(skipped)} invalid pairs:")
    for r in skipped:
        print(f"  line {r['row_index']}: {r['field']}: {r['reason']}")


if __name__ == "__main__":
    main()
