"""A wall-clock deadline for a run: `train.time_limit`, and the budget `strategy: auto` promises.

A time limit bounds the whole run, from its start to the written best bundle and test metrics. The loop asks
the deadline before every step whether one more step still leaves time for what must follow it: a validation
pass, the test pass on the best model, and the report. Those costs are measured as the run goes (the first
validation pass times the next ones, the test pass costs what validation costs per sample), so a run stops a
step early rather than a pass late.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from ..errors import ConfigError

# What a run pays besides its steps and its passes over the data: setting up, writing and reloading the best
# bundle, the report's figures and page (it scores the test pass's outputs, charged per sample). It
# grows with the model (its bundle is written and read back): measured here, 0.45 s for the unit tests' toy
# CNN (0.3 s of it the report's four figures) and about 1.2 s for EfficientNet-Lite0 (3.4M parameters);
# capped, as a guess, for larger models.
FINISH_S = 0.45
FINISH_PER_M_PARAMS_S = 0.2
FINISH_MAX_S = 4.0


def finish_seconds(params_m: float) -> float:
    """The fixed seconds a run of a model with `params_m` million parameters pays (see FINISH_S)."""
    return min(FINISH_S + FINISH_PER_M_PARAMS_S * params_m, FINISH_MAX_S)


def parse_duration(value: str | float | int | None, what: str = "the budget") -> float | None:
    """'90s', '10m', '1.5h' or a number of seconds -> seconds."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        seconds = None if value is None else float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value))
        if not m:
            raise ConfigError(f"cannot read {what} {value!r}; write seconds, minutes or hours like 90s, 10m, 1.5h")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds is not None and seconds <= 0:
        raise ConfigError(f"{what} must be positive, received {value!r}")
    return seconds


def process_started() -> float:
    """When this process started (time.time()), so a command's budget counts its imports and data loading
    too; the current time where /proc is not available."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


@dataclass
class Deadline:
    """The time (time.time()) by which the run must have written its results, and what it has measured of
    the passes it still owes."""

    at: float
    n_val: int
    n_test: int
    batch_size: int = 32
    finish_s: float = FINISH_S  # finish_seconds() of the run's model
    val_s: float | None = None  # the last validation pass, measured
    eval_s: float | None = None  # seconds per sample of an evaluation pass, where measured before training (auto)
    step_s: float = 0.0  # the last training step, measured
    reason: str | None = None  # why the run stopped early, once it has

    @classmethod
    def until(cls, at: float | None, n_val: int, n_test: int, batch_size: int,
              finish_s: float = FINISH_S, eval_s: float | None = None) -> "Deadline | None":
        return None if at is None else cls(at, n_val, n_test, batch_size, finish_s, eval_s=eval_s)

    def left(self) -> float:
        return self.at - time.time()

    def reserve(self) -> float:
        """Seconds to keep for a validation pass, the test pass, the report and the finish."""
        # Before the first pass: the evaluation speed auto measured, else a guess, a third of a training step
        # per sample (MiniLM: 0.011 s against 0.040 s; half a step, as guessed before, stopped a 45 s run after
        # its first step with 29 s left, reserving 24 s for a test pass that took 10).
        if self.val_s is not None:
            per_sample = self.val_s / max(self.n_val, 1)
        else:
            per_sample = self.eval_s if self.eval_s is not None else self.step_s / self.batch_size / 3
        val = self.val_s if self.val_s is not None else per_sample * self.n_val
        # One test pass: the report scores the outputs it computed, not the test split again.
        return val + per_sample * self.n_test + self.finish_s

    def room_for_step(self, step_s: float) -> bool:
        """Whether one more step of `step_s` seconds leaves time for what must follow it."""
        self.step_s = step_s
        return self.left() >= self.step_s + self.reserve()

    def stop(self, why: str) -> None:
        self.reason = self.reason or why
