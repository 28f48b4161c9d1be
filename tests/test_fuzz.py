"""Property-based checks (hypothesis) of everything a user types: any config mapping, `--set` override or
`headstart fit` command line yields a valid config or one clear error, never a traceback.

bench/reliability.py runs the same PROPERTIES with many more cases.
"""
from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from headstart.cli import app
from headstart.config import load_config, valid_keys, validate_config
from headstart.errors import ConfigError

KEYS = valid_keys()
SECTIONS = sorted({k.split(".")[0] for k in KEYS})
TEXT = st.text(alphabet=string.ascii_letters + string.digits + " _-.:=[]{},/'\"\n", max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(TEXT, inner, max_size=3)), max_leaves=5)
KEY_NAMES = st.one_of(st.sampled_from(KEYS), TEXT)


@st.composite
def config_mappings(draw):
    """Mappings shaped like a run config: real and made-up keys, any values, sections of the wrong type."""
    data: dict = {}
    for key in draw(st.lists(KEY_NAMES, max_size=6)):
        section, _, leaf = key.partition(".")
        if leaf and draw(st.booleans()):
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][leaf.split(".")[0]] = draw(VALUES)
        else:
            data[section or key] = draw(VALUES)
    return data


OVERRIDES = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", KEY_NAMES, TEXT), TEXT), max_size=4)
FIT_OPTIONS = ["--epochs", "--strategy", "--backbone", "--weights", "--budget", "--set", "--text-column",
               "--label-column", "--config"]
FIT_ARGS = st.lists(st.one_of(st.tuples(st.sampled_from(FIT_OPTIONS), st.one_of(TEXT, st.sampled_from(KEYS))),
                              st.tuples(TEXT)), max_size=4)


def check_config_mapping(data: dict) -> None:
    try:
        validate_config(data)
    except ConfigError as e:
        assert str(e).strip(), "an error without a message"


def check_overrides(items: list[str]) -> None:
    try:
        load_config(None, items)
    except ConfigError as e:
        assert str(e).strip(), "an error without a message"


def check_fit_command(parts: list[tuple]) -> None:
    """A random command line against data that does not exist: it must end in a clean error, never train."""
    argv = ["fit", *[token for part in parts for token in part], "--data", "/nonexistent/headstart-fuzz-data",
            "--out", "/nonexistent/headstart-fuzz-run"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code != 0, f"{argv} trained on missing data?"
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{argv}: {type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output


PROPERTIES = {"config mapping": (config_mappings(), check_config_mapping),
              "--set overrides": (OVERRIDES, check_overrides),
              "headstart fit command line": (FIT_ARGS, check_fit_command)}
CI_CASES = 150


@settings(max_examples=CI_CASES, deadline=None, database=None)
@given(config_mappings())
def test_any_config_mapping_is_valid_or_one_config_error(data):
    check_config_mapping(data)


@settings(max_examples=CI_CASES, deadline=None, database=None)
@given(OVERRIDES)
def test_any_overrides_are_valid_or_one_config_error(items):
    check_overrides(items)


@settings(max_examples=60, deadline=None, database=None)
@given(FIT_ARGS)
def test_any_fit_command_line_ends_in_a_message_not_a_traceback(parts):
    check_fit_command(parts)
