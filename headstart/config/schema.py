"""The run config's schema: typed sections that round-trip to YAML.

A run is described by one :class:`RunConfig` (sections ``model``, ``data``, ``strategy``, ``train`` and the
output folder ``out``). The ``strategy`` and ``train`` sections are derived from the dataclasses that declare
those options once: every registered strategy's `Options`, `run.TrainSettings` and `objectives.LossSettings`.
Validated configs become those plain objects (`to_settings`); nothing below this package sees pydantic.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..errors import ConfigError
from ..objectives import DOMAIN_TERMS, WEIGHTINGS, LossSettings
from ..options import declared
from ..run.deadline import parse_duration
from ..run.settings import TrainSettings
from ..strategies import STRATEGIES, StrategyOptions, strategy_options

_STRICT = ConfigDict(extra="forbid", validate_default=True)


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or (typing.get_origin(annotation) is Literal
                                  and any(isinstance(v, bool) for v in typing.get_args(annotation)))


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """True if `value` is (or, for a list field, holds) a bool where the field expects an int or float."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # Annotated[float, Field(gt=0)] inside a union, as train.lr's
        return _bool_for_number(typing.get_args(annotation)[0], value)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if isinstance(value, bool) and any(_takes_bool(a) for a in args):
            return False
        return any(_bool_for_number(a, value) for a in args)
    if origin is list:
        item = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
        return isinstance(value, list) and any(_bool_for_number(item, v) for v in value)
    return isinstance(value, bool) and annotation in (int, float)


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, and a boolean is never read as a number."""

    model_config = _STRICT

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads True as 1, so `batch_size: true` (or `yes`, `on` in YAML 1.1) would train
        # with batch size 1. Checked on every field, so the sections derived from dataclasses are covered too.
        if _bool_for_number(cls.model_fields[info.field_name].annotation, value):
            raise PydanticCustomError(
                "bool_for_number", "a number is expected, not a boolean (YAML reads unquoted true/false, yes/no and "
                "on/off as booleans); write a number such as 32 or 0.001")
        return value


def _fields_of(*classes: type) -> dict[str, tuple[Any, Any]]:
    """pydantic field definitions of dataclass fields: type, default and bounds; nested dataclasses become
    nested sections."""
    out: dict[str, tuple[Any, Any]] = {}
    for cls in classes:
        for name, d in declared(cls).items():
            if dataclasses.is_dataclass(d.type):
                section = create_model(f"{d.type.__name__}Config", __base__=_Section, **_fields_of(d.type))
                section.__doc__ = d.type.__doc__
                out[name] = (section, Field(default_factory=section))
            else:
                default = d.default if d.factory is dataclasses.MISSING else d.factory()
                out[name] = (d.type, Field(default, **d.bounds))
    return out


# --------------------------------------------------------------------------- sections


class ModelConfig(_Section):
    """The network: backbone, pretrained weights and classification head."""

    # "auto": EfficientNet-Lite0 for images, MiniLM (all-MiniLM-L6-v2) for text, chosen by the data.
    backbone: str = Field("auto", min_length=1)
    # "auto": the backbone's pretrained weights (an installed package, else the hub); "random" to train from
    # scratch; or "package:efficientnet-lite0", a local file, "hub".
    weights: str | None = "auto"
    head: Literal["linear", "mlp"] = "linear"
    head_hidden: int = Field(512, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Overrides the weights' input size. Bounded: model.image_size=100000 ran until the OOM killer stopped it.
    image_size: int | None = Field(None, ge=16, le=2048)
    max_length: int | None = Field(None, ge=2)  # text backbones: tokens kept per text (default: the model's limit)
    pooling: Literal["cls", "mean", "max", "pooler"] | None = None  # text backbones (default: the model's own)
    normalize: bool | None = None  # text backbones: L2-normalise the embedding (default: the model's own)


class DataConfig(_Section):
    """Where the data come from and how they are split and sampled."""

    dataset: str | None = None  # a built-in data set name, e.g. "fashion-mnist"
    path: str | None = None  # an image folder (one sub-folder per class), or a .csv/.tsv/.jsonl/.json/.parquet file
    val_path: str | None = None
    test_path: str | None = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    subset: int | None = Field(None, ge=1)  # max training images per class
    test_subset: int | None = Field(None, ge=1)
    # Flips and crops while training: unset = on, except where `auto` trains images on the plain pictures;
    # true or false is kept by every strategy, auto included.
    augment: bool | None = None
    # Text files (data.path = news.csv): which columns hold the text(s) and the label.
    text_column: str | list[str] = "text"  # several columns are joined with a newline, or form a pair (text_pair)
    text_pair: bool = False  # exactly two text columns: a sentence pair (e.g. question, passage)
    label_column: str = Field("label", min_length=1)
    multi_label: bool = False  # labels are lists (JSONL/Parquet lists, JSON list strings, or label_delimiter)
    label_delimiter: str | None = Field(None, min_length=1)  # e.g. ";" for "sport;politics"; implies multi_label
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # text files without test_path: stratified test hold-out
    max_bad_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Image folders and text files: decoded (tokenised) into memory, or once into a memory-mapped store on disk
    # (docs/data_store.md); auto: disk above store_threshold GB held in memory (default: a quarter of the
    # available memory, at most 8 GB).
    store: Literal["auto", "memory", "disk"] = "auto"
    store_dir: str | None = None  # default $HEADSTART_STORE_DIR or ~/.cache/headstart/stores
    store_threshold: float | None = Field(None, gt=0.0)
    target: str | None = None  # domain adaptation: unlabeled target data (a built-in data set, folder or table)  # image folders: unreadable files skipped up to this

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



class TaskConfig(_Section):
    """One task of a multi-task run. Its labels come from one of: a label `column` of the data's table (default:
    the task's name), its own data set (`dataset` or `path`: several data sets, one per task), or a `group`ing
    of the main task's classes ({class: group})."""

    name: str = Field(min_length=1)
    type: Literal["classification", "multilabel", "regression"] = "classification"
    column: str | None = None
    dataset: str | None = None
    path: str | None = None
    label_column: str = Field("label", min_length=1)  # with path: the label column of that table
    group: dict[str, str] | None = None
    head: Literal["linear", "mlp"] | None = None  # default: model.head
    weight: float = Field(1.0, gt=0.0)  # with multitask.weighting fixed (or as a prior for uncertainty, dwa)
    lr: float | None = Field(None, gt=0.0)  # this task's head's learning rate (default train.head_lr)
    metrics: list[str] = Field(default_factory=list)  # reported beside the task type's usual metrics

    @model_validator(mode="after")
    def _one_source(self) -> "TaskConfig":
        given = [k for k in ("column", "dataset", "path", "group") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"task {self.name!r} sets {', '.join(given)}; its labels come from one of column, "
                             "dataset, path or group")
        return self


class MultitaskConfig(_Section):
    """How the tasks of a multi-task run are combined (objectives/weighting.py) and, for several data sets,
    mixed in batches (data/tasks.py)."""

    weighting: str = "equal"  # equal, fixed, uncertainty, dwa, pcgrad (headstart list weightings)
    temperature: float = Field(2.0, gt=0.0)  # dwa's softmax temperature
    mixing: Literal["proportional", "round-robin", "temperature"] = "proportional"
    mixing_temperature: float = Field(2.0, gt=0.0)

    @field_validator("weighting")
    @classmethod
    def _known_weighting(cls, value: str) -> str:
        if value not in WEIGHTINGS:
            raise ValueError(WEIGHTINGS.unknown_message(value))
        return value


class DomainConfig(_Section):
    """Unsupervised domain adaptation (objectives/domain.py): a term on unlabeled target data (data.target)."""

    method: str | None = None  # coral, mmd, dann, cdan, mcc (headstart list domains)
    weight: float = Field(1.0, ge=0.0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        if value is not None and value not in DOMAIN_TERMS:
            raise ValueError(DOMAIN_TERMS.unknown_message(value))
        return value


class _StrategySection(_Section):
    """How the pretrained network is adapted (names are checked against the strategy registry).

    Options left at None take the strategy's default; an option the named strategy does not take is an
    error (``headstart list strategies`` shows them all).
    """

    name: str = Field("full", min_length=1)

    def options(self) -> dict[str, Any]:
        """The strategy options that are set (everything but name and bn), as plain keyword arguments."""
        return {k: v for k, v in self.model_dump().items() if k not in ("name", "bn") and v is not None}

    def check_options(self) -> "StrategyConfig":
        """Check that the named strategy takes the options set, with valid values; return self."""
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
            options = STRATEGIES.get(self.name).Options
            try:
                options(bn=self.bn, **self.options())  # the strategy's own checks of the values
            except ConfigError as e:  # name the config keys: "lp_epochs must be >= 1" -> "strategy.lp_epochs ..."
                raise ConfigError(re.sub(rf"\b({'|'.join(declared(options))})\b", r"strategy.\1", str(e))) from None
        return self


def _strategy_option_fields() -> dict[str, tuple[Any, Any]]:
    """Every registered strategy's options, each once, left at None (= the strategy's default)."""
    fields: dict[str, tuple[Any, Any]] = {"bn": _fields_of(StrategyOptions)["bn"]}
    for name in STRATEGIES:
        for key, d in declared(STRATEGIES.get(name).Options).items():
            if key not in fields:
                fields[key] = (d.type | None, Field(None, **d.bounds))
    fields["budget"] = (str | None, None)  # auto: time budget such as 90s, 10m, 1.5h (None = no limit)
    return fields


class _TrainSection(_Section):
    """Optimisation, precision, loss, evaluation and caching settings (`run.TrainSettings` and
    `objectives.LossSettings`)."""

    @field_validator("time_limit", mode="before", check_fields=False)
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return value if isinstance(value, bool) else parse_duration(value, "train.time_limit")

    @field_validator("channels_last", mode="before", check_fields=False)
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `on` / `off` as a boolean.
        if value is True:
            return "on"
        if value is False:
            return "off"
        return value


# train.lr also takes "auto": hs.fit runs the LR finder (plan/lr_find.py) and records the rate it found here,
# so run.TrainSettings (what run.fit reads) always holds a number.
_LR = (Union[Annotated[float, Field(gt=0.0)], Literal["auto"], None], Field(None))
TrainConfig = create_model("TrainConfig", __base__=_TrainSection,
                           **{**_fields_of(TrainSettings, LossSettings), "lr": _LR})
TrainConfig.__doc__ = _TrainSection.__doc__
EarlyStoppingConfig = TrainConfig.model_fields["early_stopping"].annotation


class _RunSection(_Section):
    """Everything one training run needs."""

    @model_validator(mode="after")
    def _distinct_tasks(self):
        names = [t.name for t in self.tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two tasks are named {twice[0]!r}; every task needs its own name")
        bad = [n for n in names if not n.isidentifier()]
        if bad:
            raise ValueError(f"task name {bad[0]!r} must be a Python identifier (letters, digits, _), e.g. 'topic'")
        if len(names) == 1:
            raise ValueError(f"one task ({names[0]!r}) is a single-task run: leave tasks out, or add a second task")
        return self


@functools.lru_cache(maxsize=None)
def _run_config(strategies: tuple[str, ...]) -> type[BaseModel]:
    strategy = create_model("StrategyConfig", __base__=_StrategySection, **_strategy_option_fields())
    strategy.__doc__ = _StrategySection.__doc__
    return create_model("RunConfig", __base__=_RunSection,
                        model=(ModelConfig, Field(default_factory=ModelConfig)),
                        data=(DataConfig, Field(default_factory=DataConfig)),
                        strategy=(strategy, Field(default_factory=strategy)),
                        train=(TrainConfig, Field(default_factory=TrainConfig)),
                        tasks=(list[TaskConfig], Field(default_factory=list)),
                        multitask=(MultitaskConfig, Field(default_factory=MultitaskConfig)),
                        domain=(DomainConfig, Field(default_factory=DomainConfig)),
                        out=(str, Field("runs/run", min_length=1)))


def run_config() -> type[BaseModel]:
    """The RunConfig model for the strategies registered now: a strategy registered after import (a user's
    own) gets its options in the ``strategy`` section too."""
    return _run_config(tuple(STRATEGIES))


def strategy_config() -> type[BaseModel]:
    """The ``strategy`` section of `run_config()`."""
    return run_config().model_fields["strategy"].annotation


RunConfig = run_config()  # as built at import; configs validate against run_config(), which follows the registry
StrategyConfig = strategy_config()


# --------------------------------------------------------------------------- plain settings


def _build(cls: type, values: dict[str, Any]) -> Any:
    kwargs = {}
    for name, d in declared(cls).items():
        kwargs[name] = _build(d.type, values[name]) if dataclasses.is_dataclass(d.type) else values[name]
    return cls(**kwargs)


def train_settings(train: BaseModel) -> TrainSettings:
    """The validated ``train`` section as the plain settings `run.fit` takes."""
    return _build(TrainSettings, train.model_dump())


def loss_settings(train: BaseModel) -> LossSettings:
    """The loss keys of the validated ``train`` section as `objectives.LossSettings`."""
    return _build(LossSettings, train.model_dump())
