"""Recipes: one YAML per run, parsed into typed dataclasses, with `--key value` overrides.

Like alignment-handbook recipes, a YAML file fully describes a run. Unlike argparse-driven
parsers, recipes may nest (``output.repo_id``) and every key is checked: an unknown or mistyped
key is an error naming the key and its closest known spelling, because a silently ignored
``learning_rte`` costs a GPU-day.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

RESOLVED_RECIPE_FILENAME = "alignsmith_recipe.yaml"


class RecipeError(ValueError):
    """A recipe (YAML or override) that does not match its schema."""


def help_text(text: str, **kwargs: Any) -> Any:
    """Dataclass field carrying a help string shown by ``alignsmith <stage> <command> --help``."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


def load_recipe(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (YAML), apply ``--dotted.key value`` overrides, and build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise RecipeError(f"{path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise RecipeError(f"{path} must contain a mapping of keys, got {type(loaded).__name__}")
        data = loaded or {}
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    return build(cls, data, where=str(path) if path else "recipe")


def parse_overrides(args: Sequence[str]) -> list[tuple[str, Any]]:
    """Turn ``["--a.b", "3", "--flag=true"]`` into ``[("a.b", 3), ("flag", True)]`` (YAML-typed values)."""
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise RecipeError(f"expected an override like --key value, got {arg!r}")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise RecipeError(f"override --{key} needs a value")
            raw = args[i + 1]
            i += 1
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key.replace("-", "_"), value))
        i += 1
    return pairs


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"cannot override {key!r}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def build(cls: type[T], data: Any, where: str = "recipe") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and value type."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(
            f"{where}: unknown key {key!r}{hint}; {cls.__name__} accepts: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where != "recipe" else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{where}: missing required key(s) {', '.join(missing)} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: {err}") from None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, float):
        raise RecipeError(f"{where}: expected a string, got the number {value!r}; quote it (YAML reads 1.10 as 1.1)")
    if tp is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise RecipeError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def to_dict(recipe: Any) -> dict[str, Any]:
    """The resolved recipe as plain data (what is saved next to every output)."""
    return dataclasses.asdict(recipe)


def to_yaml(recipe: Any) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)


def save_resolved(recipe: Any, directory: str | Path) -> Path:
    """Write the fully resolved recipe into ``directory`` so any output can be re-run."""
    path = Path(directory) / RESOLVED_RECIPE_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # other processes may be reading it
    tmp.write_text(to_yaml(recipe), encoding="utf-8")
    os.replace(tmp, path)
    return path


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for ``--help``, nested dataclasses flattened with dots."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix=f"{key}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, f.metadata.get("help", "")))
    return rows


@dataclasses.dataclass(kw_only=True)
class HubRecipe:
    """Where a run reads and publishes: the embedded Hub (default), huggingface.co, or any Hub URL."""

    hub: str = help_text(
        "'local' (embedded Hub, started on demand), 'huggingface' (huggingface.co with HF_TOKEN), "
        "or the URL of another Hub-compatible endpoint.",
        default="local",
    )
    hub_root: str | None = help_text(
        "Storage folder of the embedded Hub (default: $ALIGNSMITH_HUB_ROOT or ~/.cache/alignsmith/hub).",
        default=None,
    )

    def __post_init__(self) -> None:
        if self.hub not in ("local", "huggingface") and not self.hub.startswith(("http://", "https://")):
            raise RecipeError(f"hub: expected 'local', 'huggingface' or an http(s) URL, got {self.hub!r}")


@dataclasses.dataclass(kw_only=True)
class OutputRepo:
    """A versioned Hub repo a run publishes to."""

    repo_id: str = help_text("Target repo id, e.g. 'my-org/deita-6k'.")
    tag: str | None = help_text("Version tag for this release (e.g. 'v1.0.0'); an existing tag is never moved.", default=None)
    private: bool = help_text("Create the repo as private.", default=False)
    branch: str = help_text("Branch to commit to.", default="main")
    license: str | None = help_text(
        "License in the card (e.g. apache-2.0); a dataset's should respect its sources' licenses.", default=None
    )

    def __post_init__(self) -> None:
        if self.repo_id.count("/") != 1 or not all(self.repo_id.split("/")):
            raise RecipeError(f"output.repo_id: expected 'namespace/name', got {self.repo_id!r}")
