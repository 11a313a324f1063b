"""Recipes: one YAML per run, parsed into typed dataclasses, with `--key value` overrides.

Like alignment-handbook recipes, a YAML file fully describes a run. Unlike argparse-driven
parsers, recipes may nest (``output.repo_id``) and every key is checked: an unknown or mistyped
key is an error naming the key and its closest known spelling, because a silently ignored
``learning_rte`` costs a GPU-day. For the same reason every value is checked when the recipe loads:
types, declared ranges (see :func:`help_text`) and each recipe class's own rules, so a bad value
fails before any model loads, not hours into a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from alignsmith.errors import AlignsmithError
from alignsmith.files import atomic_write

T = TypeVar("T")

RESOLVED_RECIPE_FILENAME = "alignsmith_recipe.yaml"


class RecipeError(AlignsmithError):
    """A recipe (YAML or override) that does not match its schema."""


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """An option passed in code, checked as a recipe's ``Literal`` is at load (a wrong value is a caller's bug)."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a numeric recipe value must lie in; declared on its field, checked by :func:`build`."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None

    def __contains__(self, value: float) -> bool:
        return (
            not _infinite_or_nan(value)
            and (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.exclusive_minimum is None or value > self.exclusive_minimum)
            and (self.exclusive_maximum is None or value < self.exclusive_maximum)
        )

    def __str__(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum:g} and {self.maximum:g}"
        limits = [
            f"{word} {limit:g}"
            for word, limit in (("at least", self.minimum), ("above", self.exclusive_minimum),
                                ("at most", self.maximum), ("below", self.exclusive_maximum))
            if limit is not None
        ]
        return " and ".join(limits)


def help_text(
    text: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    exclusive_maximum: float | None = None,
    **kwargs: Any,
) -> Any:
    """Dataclass field carrying a help string shown by ``alignsmith <stage> <command> --help``.

    Bounds make :func:`build` refuse an out-of-range number (or list item) when the recipe loads,
    rather than when the run reaches the code that uses it, hours later.
    """
    metadata: dict[str, Any] = {"help": text}
    bounds = Bounds(minimum, maximum, exclusive_minimum, exclusive_maximum)
    if bounds != Bounds():
        metadata["bounds"] = bounds
    return dataclasses.field(metadata=metadata, **kwargs)


def non_default(recipe: Any, names: Iterable[str]) -> list[str]:
    """Those of ``names`` whose value differs from the field's default: options someone set on purpose.

    A recipe refuses such an option when its other settings make the run ignore it.
    """
    fields = {f.name: f for f in dataclasses.fields(recipe)}
    return [name for name in names if getattr(recipe, name) != _default(fields[name])]


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


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
    return build(cls, data)  # errors name the key alone: its value may come from the file or an override


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
    """Build dataclass ``cls`` from a mapping, checking every key, value type and declared range.

    ``where`` is the key path of ``data`` ("recipe" at the top). A ``__post_init__`` may refuse
    values too: its :class:`RecipeError` names keys relative to ``cls`` ("repo_id: ...") and gets
    ``where`` in front ("output.repo_id: ..."); any other error it raises is put after ``where``.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        if key in getattr(cls, "removed_keys", {}):  # a key of an earlier release: say what replaced it
            raise RecipeError(f"{_key(where, key)}: removed; {cls.removed_keys[key]}")
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(
            f"{where}: unknown key {key!r}{hint}; {cls.__name__} accepts: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(value, hints[name], _key(where, name)) for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{where}: missing required key(s) {', '.join(missing)} for {cls.__name__}")
    _check_bounds(cls, kwargs, where)
    try:
        return cls(**kwargs)
    except RecipeError as err:
        if where == "recipe":
            raise
        raise RecipeError(f"{where}.{err}") from None
    except (TypeError, ValueError, AlignsmithError) as err:
        raise RecipeError(f"{where}: {err}") from None


def _check_bounds(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Refuse the first of ``values`` outside the bounds its field of ``cls`` declares (see :func:`help_text`)."""
    for f in dataclasses.fields(cls):
        bounds, value = f.metadata.get("bounds"), values.get(f.name)
        if bounds is None or value is None:
            continue
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if item not in bounds:
                key = _key(where, f.name) + ("" if index is None else f"[{index}]")
                finite = "a finite number " if _infinite_or_nan(item) else ""
                raise RecipeError(f"{key}: must be {finite}{bounds}, got {item!r}")


def _infinite_or_nan(value: float) -> bool:
    return isinstance(value, float) and not math.isfinite(value)  # ints are finite, however large


def _key(where: str, name: str) -> str:
    return name if where == "recipe" else f"{where}.{name}"


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
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        # not str(value): that is not always what was typed (YAML reads 0755 as 493 and 1_000 as 1000)
        raise RecipeError(f"{where}: expected a string, got the number {value!r}; quote it (YAML reads 1.10 as 1.1)")
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
    atomic_write(path, to_yaml(recipe))  # other processes may be reading it
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
        default = _default(f)
        text = f.metadata.get("help", "")
        if "bounds" in f.metadata:
            text += f" ({f.metadata['bounds']})"
        rows.append((key, "(required)" if default is dataclasses.MISSING else repr(default), text))
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
    language: list[str] | None = help_text(
        "Languages of a published dataset's text as ISO 639 codes (e.g. [en]), for its card; "
        "left out of the card when not given.", default=None
    )

    def __post_init__(self) -> None:
        if self.repo_id.count("/") != 1 or not all(self.repo_id.split("/")):
            raise RecipeError(f"repo_id: expected 'namespace/name', got {self.repo_id!r}")
