"""The config engine: YAML files and ``--set a.b=value`` overrides into a validated `RunConfig`.

A config is loaded once at the edge with :func:`load_config`, validated, and taken apart into plain settings;
no module below this package takes a config object. Every problem is a :class:`~headstart.errors.ConfigError`
that says what was received, what is allowed and how to fix it.
"""
from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from ..atomic import atomic_write_text
from ..errors import ConfigError
from .schema import RunConfig, run_config


# --------------------------------------------------------------------------- YAML


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {key!r} appears twice in one mapping (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of the base is an intended override, not a duplicate
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error reports it below
                    continue
                if first is not None:
                    raise _DuplicateKey(key, first, line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# --------------------------------------------------------------------------- schema helpers


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The model class if a field annotation is a config section, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    return {name: info.annotation for name, info in model.model_fields.items()}


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, annotation in _fields(model).items():
        sub = _section_type(annotation)
        if sub is not None:
            keys.extend(_leaf_keys(sub, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def valid_keys() -> list[str]:
    """All dotted leaf keys of a run config, sorted (e.g. ``train.early_stopping.patience``)."""
    return sorted(_leaf_keys(run_config()))


def _unknown_key_message(prefix: str, key: str, model: type[BaseModel]) -> str:
    full = f"{prefix}.{key}" if prefix else key
    names = sorted(_fields(model))
    msg = f"unknown config key {full!r}."
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        suggestion = f"{prefix}.{close[0]}" if prefix else close[0]
    else:
        # Maybe the key exists in another section (e.g. 'lr' instead of 'train.lr').
        leaves = valid_keys()
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in leaves}
        close = difflib.get_close_matches(key, list(by_leaf), n=1, cutoff=0.8)
        suggestion = by_leaf[close[0]] if close else None
    if suggestion:
        msg += f" Did you mean {suggestion!r}?"
    where = f"under {prefix!r}" if prefix else "at the top level"
    msg += f" Valid keys {where}: {', '.join(names)}."
    return msg


def _check_keys(data: dict, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Messages for every unknown key in a raw config mapping (recursively)."""
    problems: list[str] = []
    fields = _fields(model)
    for key, value in data.items():
        name = str(key)
        if name not in fields:
            problems.append(_unknown_key_message(prefix, name, model))
            continue
        sub = _section_type(fields[name])
        if sub is not None and isinstance(value, dict):
            problems.extend(_check_keys(value, sub, f"{prefix}.{name}" if prefix else name))
    return problems


def _normalise_sections(data: dict, model: type[BaseModel]) -> dict:
    """Copy ``data`` with empty sections (``train:`` with nothing under it) turned into {}."""
    out: dict = {}
    fields = _fields(model)
    for key, value in data.items():
        sub = _section_type(fields.get(key))
        if sub is not None:
            if value is None:
                value = {}
            if isinstance(value, dict):
                value = _normalise_sections(value, sub)
        out[key] = value
    return out


# --------------------------------------------------------------------------- overrides


_OVERRIDE_FORM = "key=value, e.g. train.epochs=10 or model.weights=null (valid keys: see valid_keys())"


def _literal_values(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return list(typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        values: list[Any] = []
        for arg in typing.get_args(annotation):
            values.extend(_literal_values(arg))
        return values
    return []


def _accepted_types(annotation: Any) -> set[Any]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        result: set[Any] = set()
        for arg in typing.get_args(annotation):
            result |= _accepted_types(arg)
        return result
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if annotation is None or annotation is type(None):
        return {type(None)}
    return {annotation}


def _cast_value(raw: str, annotation: Any) -> Any:
    """Parse an override value with YAML, then nudge it towards the field's type.

    ``3`` -> 3, ``1e-4`` -> 0.0001, ``true`` -> True, ``null`` -> None, ``[1,2]`` -> [1, 2];
    a value for a string field stays the text that was typed (``name=123`` -> "123",
    ``channels_last=on`` -> "on"), so YAML's implicit typing never surprises.
    """
    text = raw.strip()
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader) if text else None
    except _DuplicateKey as e:
        raise ConfigError(f"override value {text!r} gives key {e.key!r} twice; give each key once.") from None
    except yaml.YAMLError:
        value = text
    accepted = _accepted_types(annotation)
    literals = _literal_values(annotation)
    if isinstance(value, (bool, int, float)) and not any(
        type(value) is t or (t is float and type(value) is int) for t in accepted
    ):
        if str in accepted and (not literals or text in literals):
            return text
    if isinstance(value, str) and str not in accepted:
        for t in (int, float):
            if t in accepted:
                try:
                    return t(value)
                except ValueError:
                    pass
    if isinstance(value, str) and literals and value not in literals and text in literals:
        return text
    return value


def _parse_override(item: str) -> tuple[list[str], str]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} has no '='. Expected the form {_OVERRIDE_FORM}.")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.startswith("--"):
        key = key[2:]
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise ConfigError(f"override {item!r} has an empty key. Expected the form {_OVERRIDE_FORM}.")
    return [p.strip() for p in parts], raw


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(data: dict, item: str) -> None:
    """Apply one ``a.b=value`` override to a raw config mapping, in place."""
    parts, raw = _parse_override(item)
    model: type[BaseModel] = run_config()
    node = data
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        fields = _fields(model)
        if part not in fields:
            raise ConfigError(_unknown_key_message(prefix, part, model))
        annotation = fields[part]
        sub = _section_type(annotation)
        here = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if sub is None and not last:
            raise ConfigError(
                f"cannot set {'.'.join(parts)!r}: {here!r} is a value, not a section. "
                f"Set it directly, e.g. {here}=<value>."
            )
        if last:
            if sub is not None:
                value = _cast_value(raw, dict)
                if not isinstance(value, dict):
                    example = f"{here}.{sorted(_fields(sub))[0]}=<value>"
                    raise ConfigError(
                        f"cannot set {here!r} to {raw.strip()!r}: {here!r} is a section, not a value. "
                        f"Set one of its keys ({', '.join(sorted(_fields(sub)))}), e.g. {example}."
                    )
                current = node.get(part)
                node[part] = _deep_merge(current if isinstance(current, dict) else {}, value)
            else:
                node[part] = _cast_value(raw, annotation)
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, BaseModel):
            child = node[part] = child.model_dump()
        elif not isinstance(child, dict):
            raise ConfigError(
                f"cannot set {'.'.join(parts)!r}: {here!r} holds {child!r}, not a mapping of keys. "
                f"Fix {here!r} in the config file (it must be a section)."
            )
        node = child
        model = sub  # type: ignore[assignment]


# --------------------------------------------------------------------------- validation


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loc_to_path(loc: tuple) -> str:
    """Dotted key for a pydantic error location, dropping union member tags past a leaf."""
    path = ""
    model: type[BaseModel] | None = run_config()
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
            model = None
        elif model is not None:
            path += f".{item}" if path else str(item)
            model = _section_type(_fields(model).get(item))
    return path or "(top level)"


def _validation_message(err: ValidationError, source: str | None) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        if e.get("type") == "extra_forbidden" and loc:
            prefix, key = loc[:-1], str(loc[-1])
            model: type[BaseModel] = run_config()
            for p in prefix:
                sub = _section_type(_fields(model).get(p)) if isinstance(p, str) else None
                if sub is None:
                    break
                model = sub
            line = "  " + _unknown_key_message(".".join(map(str, prefix)), key, model)
        else:
            path = _loc_to_path(loc)
            line = f"  {path}: received {_short_repr(e.get('input'))}; {e.get('msg')}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    where = f" in {source}" if source else ""
    head = f"invalid config{where} ({len(lines)} problem{'s' if len(lines) != 1 else ''}):"
    tail = "Fix these values in the config file or with --set key=value."
    return "\n".join([head, *lines, tail])


def _raise_unknown_keys(data: dict, source: str | None) -> None:
    problems = _check_keys(data, run_config())
    if not problems:
        return
    if len(problems) == 1:
        raise ConfigError(problems[0] + (f" (in {source})" if source else ""))
    where = f" in {source}" if source else ""
    raise ConfigError(f"unknown config keys{where}:\n" + "\n".join(f"  {p}" for p in problems))


def _validate(data: dict, source: str | None = None) -> RunConfig:
    data = _normalise_sections(data, run_config())
    _raise_unknown_keys(data, source)
    try:
        config = run_config().model_validate(data)
    except ValidationError as err:
        raise ConfigError(_validation_message(err, source)) from None
    config.strategy.check_options()  # needs the strategy registry, so after the schema checks
    return config


# --------------------------------------------------------------------------- public API


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {str(path)!r} (looked in {str(path.resolve().parent)!r}). "
            "Check the path, or leave it out to start from the defaults."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read config file {str(path)!r}: {exc}. Pass a readable UTF-8 YAML file."
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise ConfigError(
            f"config file {str(path)!r} sets {e.key!r} twice in the same section (lines {e.first} and {e.second}); "
            "YAML would silently keep only the last one. Remove one of them."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        line_text = ""
        if mark is not None:
            lines = text.splitlines()
            if 0 <= mark.line < len(lines):
                line_text = f" (line {mark.line + 1}: {lines[mark.line].strip()!r})"
        raise ConfigError(
            f"cannot parse YAML in {str(path)!r}{at}: {problem}{line_text}. "
            "Fix the syntax: one 'key: value' per line, sections indented under their name."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of sections at the top level "
            f"(model, data, strategy, train, out); received a {type(data).__name__}: {_short_repr(data)}. "
            "Write it as 'section:' lines with 'key: value' entries indented below."
        )
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply ``a.b=value`` overrides, validate.

    Raises ConfigError for a missing or malformed file, unknown keys, overrides without
    '=' and values that fail validation.
    """
    source = None
    data: dict = {}
    if path is not None:
        p = Path(path).expanduser()
        source = str(p)
        data = _read_yaml(p)
    data = _normalise_sections(data, run_config())
    _raise_unknown_keys(data, source)  # report file typos before applying overrides
    for item in overrides or []:
        _apply_override(data, item)
    return _validate(data, source)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a new, validated config with ``a.b=value`` overrides applied to ``config``."""
    if isinstance(overrides, str):
        overrides = [overrides]
    data = config.model_dump()
    for item in overrides:
        _apply_override(data, item)
    return _validate(data)


def config_to_yaml(config: RunConfig) -> str:
    """The config as YAML text, in field order; :func:`load_config` reads it back equal."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the config as YAML atomically (temp file in the same folder, then os.replace)."""
    return atomic_write_text(path, config_to_yaml(config))


def validate_config(data: dict, source: str | None = None) -> RunConfig:
    """Validate a plain dict (as read from YAML) into a RunConfig, with the same errors as load_config."""
    return _validate(data, source)
