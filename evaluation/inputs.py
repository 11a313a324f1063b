"""Reading the files the evaluation stage scores: judgment JSONL, annotation JSON, bundled prompts.

Judgments and annotations come from other tools (FastChat, AlpacaEval) and are often hand-edited, so a
bad row is reported with its file, record and field rather than as a pandas traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignsmith.errors import AlignsmithError

DATA_DIR = Path(__file__).parent / "data"


class EvalInputError(AlignsmithError):
    """A judgment, annotation or question file that cannot be scored as it is."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every non-blank line of a JSON Lines file, each an object; a bad line names its number."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalInputError(f"{path}: line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise EvalInputError(f"{path}: line {number} is a JSON {type(row).__name__}, not an object")
            rows.append(row)
    return rows


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalInputError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None


def require(row: dict[str, Any], field: str, where: str, kinds: type | tuple[type, ...]) -> Any:
    """``row[field]``, checked to be present and of ``kinds`` (``where`` names the file and record)."""
    if field not in row:
        raise EvalInputError(f"{where}: missing field {field!r}")
    value = row[field]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is not a number
        names = " or ".join(k.__name__ for k in kinds)
        raise EvalInputError(f"{where}: field {field!r} must be {names}, got {value!r:.80}")
    return value
