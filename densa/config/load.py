"""Recipe loading: YAML file(s) + `--set` overrides → a validated, frozen `RunConfig`.

Strict: an unknown key names its dotted path and the closest valid key; a wrong type names the expected
type; every problem (structure first, then the cross-section rules of `densa.config.checks`) is collected
and raised together in one `ConfigError`. Each problem is attributed to the file (or `--set`) that set
the offending key, so an error inherited through `base:` points at the base file.

`base: other.yaml` (relative to the recipe's folder) inherits one recipe; the base may itself have a base
(cycles are an error). Mappings deep-merge; lists and scalars replace. With `init.from_path`, `model:`
fields left out are read from that folder (`densa.config.init_model`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from densa.config.checks import CHOICES, Problem, cross_section_problems, literal_choices
from densa.config.errors import ConfigError
from densa.config.init_model import fill_model, model_problems
from densa.config.schema import RunConfig
from densa.errors import DensaError

_FAIL = object()  # marks a value that could not be built; its problem is already recorded
Origins = dict[str, str]  # dotted path → label of the file (or "--set") that set it


# --- YAML -------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`) and records duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                self.duplicates.append(f"line {line}: duplicate key {key!r} (first at line {seen[key]})")
            elif isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, label: str) -> Any:
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{label}: invalid YAML: {err}") from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([f"{label}: {d}" for d in loader.duplicates])
    return data


def parse_scalar(text: str) -> Any:
    """Parse an override value the way the recipe file would (`1e-3` → float, `[1, 2]` → list)."""
    return _parse_yaml(text, "--set") if text.strip() else ""


# --- composition: base + overrides -------------------------------------------------------------------


def _record(data: Any, prefix: str, label: str, origins: Origins) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            origins[path] = label
            _record(value, path, label, origins)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _compose(
    data: Any, label: str, folder: Path, origins: Origins, chain: tuple[Path, ...]
) -> dict[str, Any]:
    """Resolve `base:` chains; `chain` holds the files already open, to catch cycles."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    base = data.pop("base", None)
    merged: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{label}: base: expected a file name (string), got {base!r}")
        base_path = folder / base
        resolved = base_path.resolve()
        if resolved in chain:
            cycle = " -> ".join([p.name for p in chain] + [resolved.name])
            raise ConfigError(f"{label}: base: cycle {cycle}")
        if not base_path.is_file():
            raise ConfigError(f"{label}: base: file not found: {base_path} (relative to the recipe's folder)")
        base_label = str(base_path)
        base_data = _parse_yaml(base_path.read_text(encoding="utf-8"), base_label)
        merged = _compose(base_data, base_label, base_path.parent, origins, (*chain, resolved))
    _record(data, "", label, origins)
    return _deep_merge(merged, data)


def _apply_override(data: dict[str, Any], item: str, origins: Origins) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set optim.lr=1e-3")
    if key == "base" or key.startswith("base."):
        raise ConfigError(f"--set {item}: base can only be set inside a recipe file")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not (part.isdigit() and int(part) < len(node)):
                parent = ".".join(parts[:i])
                raise ConfigError(f"--set {item}: {parent}: no list item {part} (the list has {len(node)})")
            node = node[int(part)]
        elif isinstance(node, dict):
            if not isinstance(node.get(part), (dict, list)):
                if node.get(part) is not None and part in node:
                    raise ConfigError(f"--set {item}: {where} is a value, not a section")
                node[part] = {}
            node = node[part]
    value = parse_scalar(text)
    last = parts[-1]
    if isinstance(node, list):
        if not (last.isdigit() and int(last) < len(node)):
            parent = ".".join(parts[:-1])
            raise ConfigError(f"--set {item}: {parent}: no list item {last} (the list has {len(node)})")
        node[int(last)] = value
    else:
        node[last] = value
    origins[key] = "--set"
    _record(value, key, "--set", origins)


# --- typed building ----------------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        if len(set(args)) == 1:
            return f"list of {len(args)} {_type_name(args[0])}s"
        return "list [" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict or tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    if literal_choices(tp) is not None:
        return "one of " + ", ".join(literal_choices(tp))
    return {bool: "bool (true/false)", int: "int", float: "float", str: "string"}.get(tp, str(tp))


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


class _Builder:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> Any:
        self.problems.append(Problem(path, message))
        return _FAIL

    def mismatch(self, path: str, tp: Any, value: Any) -> Any:
        return self.fail(path, f"expected {_type_name(tp)}, got {_show(value)}")

    def convert(self, value: Any, tp: Any, path: str) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            if value is None or (not dataclasses.is_dataclass(inner) and not self._fits(value, inner)):
                return self.mismatch(path, tp, value)
            return self.convert(value, inner, path)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, path)
        choices = literal_choices(tp)
        if choices is not None:
            return (
                self._choice(value, path, choices)
                if isinstance(value, str)
                else self.mismatch(path, tp, value)
            )
        if origin is tuple:
            return self._tuple(value, tp, args, path)
        if origin is dict or tp is dict:
            if not isinstance(value, Mapping):
                return self.mismatch(path, tp, value)
            return dict(value)
        if not self._fits(value, tp):
            return self.mismatch(path, tp, value)
        value = float(value) if tp is float else value
        return self._choice(value, path) if tp is str else value

    @staticmethod
    def _fits(value: Any, tp: Any) -> bool:
        if tp is float:  # the one numeric coercion: int → float (bool is not a number here)
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if tp in (bool, str):
            return isinstance(value, tp)
        return typing.get_origin(tp) is tuple and isinstance(value, (list, tuple))

    def _tuple(self, value: Any, tp: Any, args: tuple[Any, ...], path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            return self.mismatch(path, tp, value)
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(value) != len(args):
            plural = "" if len(value) == 1 else "s"
            return self.fail(path, f"expected {_type_name(tp)}, got {len(value)} item{plural}")
        items = [
            self.convert(v, args[0] if variadic else args[i], f"{path}.{i}") for i, v in enumerate(value)
        ]
        return _FAIL if any(v is _FAIL for v in items) else tuple(items)

    def _choice(self, value: str, path: str, choices: tuple[str, ...] | None = None) -> Any:
        choices = choices or CHOICES.get(re.sub(r"\.\d+(?=\.|$)", "", path))
        if choices is None or value in choices:
            return value
        for choice in choices:  # the one string coercion: case-insensitive match to a choice
            if value.lower() == choice.lower():
                return choice
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return self.fail(path, f"{value!r} is not one of {', '.join(choices)}{hint}")

    def build(self, cls: type, data: Any, path: str) -> Any:
        if data is None:  # an empty section (`eval:`) means all defaults
            data = {}
        if not isinstance(data, Mapping):
            return self.mismatch(path, cls, data)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        ok = True
        for key in data:
            if key not in fields:
                ok = False
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
                self.fail(_join(path, str(key)), f"unknown key ({hint})")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            sub = _join(path, name)
            if name in data:
                kwargs[name] = self.convert(data[name], _hints(cls)[name], sub)
                ok = ok and kwargs[name] is not _FAIL
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ok = False
                self.fail(sub, f"missing required field ({_type_name(_hints(cls)[name])})")
        if not ok:
            return _FAIL
        try:
            return cls(**kwargs)
        except (ValueError, TypeError, DensaError) as err:  # a section's own __post_init__ rule
            # "rope_scaling.factor must be > 0" or "n_heads must be > 0" → point at the field's dotted path.
            leaf = re.escape(path.rsplit(".", 1)[-1])
            m = re.match(rf"^(?:{leaf}\.)?(\w+)(?::\s*| (?=must))(.*)$", str(err), re.S)
            if m and m.group(1) in fields:
                return self.fail(_join(path, m.group(1)), m.group(2))
            return self.fail(path, str(err))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _render(problems: Iterable[Problem], origins: Origins, default: str) -> list[str]:
    lines = []
    for prob in problems:
        parts = prob.path.split(".") if prob.path else []
        label = default
        for n in range(len(parts), 0, -1):  # the longest prefix some file (or --set) wrote
            if ".".join(parts[:n]) in origins:
                label = origins[".".join(parts[:n])]
                break
        lines.append(f"{label}: {prob.path}: {prob.message}" if prob.path else f"{label}: {prob.message}")
    return lines


# --- public API --------------------------------------------------------------------------------------


def load_recipe_dict(
    data: Mapping[str, Any], source: str = "<recipe>", overrides: Sequence[str] = (), *, check: bool = True
) -> RunConfig:
    """Build a `RunConfig` from an already-parsed recipe; `source` labels errors and anchors `base:`.

    `check=False` skips the cross-section rules (structure and types are always checked).
    """
    origins: Origins = {}
    data = copy.deepcopy(data)  # overrides edit the composed tree in place; the caller's dict stays as is
    composed = _compose(data, source, Path(source).parent, origins, (Path(source).resolve(),))
    for item in overrides:
        _apply_override(composed, item, origins)
    init = fill_model(composed, check)  # model: fields left out come from init.from_path
    builder = _Builder()
    cfg = builder.build(RunConfig, composed, "")
    if init.problems or builder.problems:
        problems = [*init.problems, *(model_problems(None, init) if check else []), *builder.problems]
        raise ConfigError(_render(problems, origins, source))
    if check:
        problems = [*model_problems(cfg.model, init), *cross_section_problems(cfg)]
        if problems:
            raise ConfigError(_render(problems, origins, source))
    return cfg


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, check: bool = True) -> RunConfig:
    """Load a recipe file, apply `--set KEY=VALUE` overrides, and validate everything at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    data = _parse_yaml(path.read_text(encoding="utf-8"), str(path))
    return load_recipe_dict(data, str(path), overrides, check=check)


def recipe_to_dict(cfg: Any) -> Any:
    """Plain YAML-able data (dicts, lists, scalars) from a `RunConfig` or any section of it."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: recipe_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [recipe_to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: recipe_to_dict(v) for k, v in cfg.items()}
    return cfg


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    # Short lists of scalars (betas, freeze patterns) read best inline.
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_recipe(cfg: RunConfig) -> str:
    """The resolved recipe as YAML; `load_recipe_dict(yaml.safe_load(text))` gives `cfg` back."""
    return yaml.dump(recipe_to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def load_yaml_dataclass(path: str | Path, cls: type) -> Any:
    """Load a flat YAML file into the frozen dataclass `cls` with the recipe rules: unknown keys fail
    with a did-you-mean hint, types are checked, every problem is reported at once with the file name.
    (Used by settings files that are not recipes, e.g. `densa.editing` hparams.)"""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    data = _parse_yaml(path.read_text(encoding="utf-8"), str(path))
    builder = _Builder()
    built = builder.build(cls, data, "")
    if builder.problems:
        raise ConfigError(_render(builder.problems, {}, str(path)))
    return built
