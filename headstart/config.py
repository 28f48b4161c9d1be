"""Run configuration: typed, validated data that round-trips to YAML.

A run is described by one :class:`RunConfig` (sections ``model``, ``data``, ``strategy``,
``train`` and the output folder ``out``). It is loaded once at the edge with
:func:`load_config` (a YAML file plus ``--set a.b=value`` overrides), validated, and then
taken apart into plain arguments for the rest of the package; no other module takes a
config object.

Every problem is reported as a :class:`~headstart.errors.ConfigError` that says what was
received, what is allowed and how to fix it.
"""
from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .atomic import atomic_write_text
from .errors import ConfigError

__all__ = [
    "ModelConfig",
    "DataConfig",
    "StrategyConfig",
    "EarlyStoppingConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "config_to_yaml",
    "save_config",
    "valid_keys",
    "validate_config",
]


# --------------------------------------------------------------------------- models


class ModelConfig(BaseModel):
    """The network: backbone, pretrained weights and classification head."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    backbone: str = Field("timm:tf_efficientnet_lite0", min_length=1)
    weights: str | None = None  # e.g. "package:efficientnet-lite0", a local file, "hub"
    head: Literal["linear", "mlp"] = "linear"
    head_hidden: int = Field(512, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    image_size: int | None = Field(None, ge=16)  # overrides the weights' input size
    max_length: int | None = Field(None, ge=2)  # text backbones: tokens kept per text (default: the model's limit)
    pooling: Literal["cls", "mean", "max", "pooler"] | None = None  # text backbones (default: the model's own)
    normalize: bool | None = None  # text backbones: L2-normalise the embedding (default: the model's own)


class DataConfig(BaseModel):
    """Where the data come from and how they are split and sampled."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    dataset: str | None = None  # a built-in data set name, e.g. "fashion-mnist"
    path: str | None = None  # an image folder (one sub-folder per class), or a .csv/.tsv/.jsonl/.json/.parquet file
    val_path: str | None = None
    test_path: str | None = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    subset: int | None = Field(None, ge=1)  # max training images per class
    test_subset: int | None = Field(None, ge=1)
    augment: bool = True
    # Text files (data.path = news.csv): which columns hold the text(s) and the label.
    text_column: str | list[str] = "text"  # several columns are joined with a newline, or form a pair (text_pair)
    text_pair: bool = False  # exactly two text columns: a sentence pair (e.g. question, passage)
    label_column: str = Field("label", min_length=1)
    multi_label: bool = False  # labels are lists (JSONL/Parquet lists, JSON list strings, or label_delimiter)
    label_delimiter: str | None = Field(None, min_length=1)  # e.g. ";" for "sport;politics"; implies multi_label
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # text files without test_path: stratified test hold-out

    @field_validator("text_column")
    @classmethod
    def _text_columns(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError("give a column name or a list of distinct, non-empty column names, e.g. [title, body]")
        return value

    @model_validator(mode="after")
    def _pair_needs_two_columns(self) -> "DataConfig":
        if self.text_pair and (isinstance(self.text_column, str) or len(self.text_column) != 2):
            raise ValueError(f"text_pair=true needs exactly two text columns (first and second text), got "
                             f"text_column={self.text_column!r}; e.g. --set data.text_column=[question,passage]")
        return self

    @property
    def is_multi_label(self) -> bool:
        return self.multi_label or self.label_delimiter is not None

    def require_source(self) -> "DataConfig":
        """Check that exactly one of ``dataset`` / ``path`` is set; return self.

        Not a model validator: a config may be completed by CLI flags after loading, so
        the check runs where the data is actually needed.
        """
        if self.dataset is None and self.path is None:
            raise ConfigError(
                "no training data given: neither data.dataset nor data.path is set. "
                "Set exactly one: a built-in data set (e.g. --set data.dataset=fashion-mnist) "
                "or an image folder with one sub-folder per class (e.g. --set data.path=images/train)."
            )
        if self.dataset is not None and self.path is not None:
            raise ConfigError(
                f"both data.dataset ({self.dataset!r}) and data.path ({self.path!r}) are set; "
                "exactly one data source is allowed. Remove one, e.g. --set data.path=null "
                "to use the built-in data set, or --set data.dataset=null to use the folder."
            )
        return self


class StrategyConfig(BaseModel):
    """How the pretrained network is adapted (names are checked against the strategy registry).

    Options left at None take the strategy's default; an option the named strategy does not take is an
    error (``headstart list strategies`` shows them all).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: str = Field("full", min_length=1)
    bn: Literal["auto", "frozen", "train"] = "auto"
    # partial: freeze spec of the backbone layers that train, or of those that stay frozen
    # ("last:2", "first:1", "from:<group>", or name patterns such as "blocks.1*", comma-separated)
    trainable: str | None = None
    freeze: str | None = None
    unfreeze_every: int | None = Field(None, ge=1)  # gradual: epochs between unfreezing steps
    lp_epochs: int | None = Field(None, ge=1)  # lp-ft: epochs of linear probing before fine-tuning
    ft_lr_scale: float | None = Field(None, gt=0.0, le=1.0)  # lp-ft: fine-tuning lr = lr * ft_lr_scale
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)  # layer-decay: lr * layer_decay ** depth
    group_lrs: list[float] | None = None  # discriminative: one lr per layer group (input to output) [+ head]
    lora_r: int | None = Field(None, ge=1)
    lora_alpha: float | None = Field(None, gt=0.0)
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    peft_targets: list[str] | None = None  # lora, ia3: layer name patterns; None = found automatically
    l2sp_alpha: float | None = Field(None, ge=0.0)  # any strategy: L2-SP pull to the pretrained weights
    l2sp_beta: float | None = Field(None, ge=0.0)  # ... and L2 on the head
    bss_eta: float | None = Field(None, ge=0.0)  # any strategy: batch spectral shrinkage strength
    bss_k: int | None = Field(None, ge=1)  # ... number of smallest singular values shrunk
    budget: str | None = None  # auto: time budget such as 90s, 10m, 1.5h (None = no limit)

    @field_validator("trainable", "freeze")
    @classmethod
    def _spec_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            from .strategies.select import parse_spec

            parse_spec(value)
        return value

    @field_validator("group_lrs")
    @classmethod
    def _positive_lrs(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(not x > 0 for x in value)):
            raise ValueError("give one learning rate > 0 per layer group, input to output, e.g. [1e-5, 1e-4]")
        return value

    def options(self) -> dict[str, Any]:
        """The strategy options that are set (everything but name and bn), as plain keyword arguments."""
        return {k: v for k, v in self.model_dump().items() if k not in ("name", "bn") and v is not None}

    def check_options(self) -> "StrategyConfig":
        """Check that the named strategy takes the options set; return self (ConfigError otherwise)."""
        from .strategies import STRATEGIES, strategy_options

        if self.name == "auto":  # auto picks a strategy and its options itself; it takes only a budget
            unknown = sorted(set(self.options()) - {"budget"})
            if unknown:
                raise ConfigError(f"strategy 'auto' chooses its own options; remove "
                                  f"{', '.join('strategy.' + k for k in unknown)} or name a strategy.")
            return self
        if self.budget is not None:
            raise ConfigError("strategy.budget is for strategy 'auto'; remove it or set strategy.name=auto")
        if self.name in STRATEGIES:
            unknown = sorted(set(self.options()) - set(strategy_options(self.name)))
            if unknown:
                raise ConfigError(f"strategy {self.name!r} does not take {', '.join('strategy.' + k for k in unknown)}"
                                  f"; its options are {', '.join(strategy_options(self.name))}.")
        return self


class EarlyStoppingConfig(BaseModel):
    """Stop training when a validation metric stops improving."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    metric: str = Field("val/accuracy", min_length=1)
    mode: Literal["max", "min"] = "max"
    patience: int | None = Field(None, ge=1)  # None = early stopping off


class TrainConfig(BaseModel):
    """Optimisation, precision, loss and evaluation settings."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    head_lr: float | None = Field(None, gt=0.0)  # None = same as lr
    weight_decay: float = Field(0.01, ge=0.0)
    momentum: float = Field(0.9, ge=0.0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0.0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    fast_dropout: bool = True  # CPU dropout masks drawn 4 per RNG call (run/dropout.py); false = torch's own
    compile: bool = False  # torch.compile the training step's model (first epoch pays the compilation)
    loss: Literal["cross_entropy", "bce", "mse"] = "cross_entropy"  # bce: multi-label (the default there)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] = "none"
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    seed: int = 0
    eval_batch_size: int = Field(128, ge=1)
    progress: bool = True
    # Frozen-backbone features computed once and reused: auto = whenever the whole backbone is frozen.
    cache: Literal["auto", "on", "off"] = "auto"
    cache_views: int = Field(1, ge=1)  # with augmentation: 1 = the plain view only; k > 1 adds k-1 augmented views
    cache_dir: str | None = None  # default ~/.cache/headstart/features (or $HEADSTART_CACHE)

    @field_validator("channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `on` / `off` as a boolean.
        if value is True:
            return "on"
        if value is False:
            return "off"
        return value


class RunConfig(BaseModel):
    """Everything one training run needs."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out: str = Field("runs/run", min_length=1)


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
    return sorted(_leaf_keys(RunConfig))


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
        value = yaml.safe_load(text) if text else None
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
    model: type[BaseModel] = RunConfig
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
    model: type[BaseModel] | None = RunConfig
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
            model: type[BaseModel] = RunConfig
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
    problems = _check_keys(data, RunConfig)
    if not problems:
        return
    if len(problems) == 1:
        raise ConfigError(problems[0] + (f" (in {source})" if source else ""))
    where = f" in {source}" if source else ""
    raise ConfigError(f"unknown config keys{where}:\n" + "\n".join(f"  {p}" for p in problems))


def _validate(data: dict, source: str | None = None) -> RunConfig:
    data = _normalise_sections(data, RunConfig)
    _raise_unknown_keys(data, source)
    try:
        config = RunConfig.model_validate(data)
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
        data = yaml.safe_load(text)
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
    data = _normalise_sections(data, RunConfig)
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
