"""The learning-rate finder: several short, seeded range tests and the band of their suggestions.

One range test (Smith 2017, "Cyclical learning rates") trains a copy of the model as the strategy would train
it (its trainable set, BatchNorm policy and optimizer groups, on the inputs `fit` would use: raw inputs,
cached features or cached prefix activations) while the learning rate grows exponentially from `min_lr` to
`max_lr`, one optimizer step per batch, and stops when the loss diverges. A single test's suggestion moves
with the batch order (pytorch-lr-finder #68 reports 1.2e-3 against 3.3e-5 from two lengths of one test), so
the finder runs `sweeps` tests with different seeds (batch order, augmentation, dropout) and reports the band
(min, median, max) of their suggestions. The suggestion is the median; the result is flagged unstable when
the band spans more than `UNSTABLE_DECADES` decades.

Rule of one test: the raw losses are smoothed with a centred window (no lag, unlike an EMA, so the minimum
is not pushed towards higher rates); the suggestion is the rate at the smoothed minimum divided by 10: one
decade below the point where larger steps stop paying off (Smith; fastai's ``minimum`` rule).

What it sets: every optimizer group's rate is scaled together, so the strategy's ratios stay: a head rate
`head_lr / lr` times the backbone's (a text encoder fine-tuned whole: 5e-5 and 1e-3 by default), layer decay,
discriminative rates. The suggestion is the base rate (`train.lr`); `head_lr` keeps its ratio. Strategies
that change what trains over epochs (lp-ft, gradual) are swept as they train in the first epoch.

The model given is never changed: each test trains a deep copy, and the global RNG state is restored.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..errors import ConfigError, DataError
from ..run.inputs import EpochInputs
from ..run.optim import build_optimizer
from ..run.settings import TrainSettings, with_rates, with_schedule
from ..run.trainer import Compute, param_groups
from ..runtime import autocast, depthwise_in_fp32

RESULT_FILE, PLOT_FILE = "lr_find.json", "lr_find.png"
UNSTABLE_DECADES = 1.0  # a band wider than this many decades is reported as unstable
DIVERGE_FACTOR = 4.0  # a smoothed loss this many times its best so far ends a test
SWEEPS, STEPS, MIN_LR, MAX_LR = 3, 80, 1e-6, 10.0
SWEEP_DEFAULTS = {"sweeps": SWEEPS, "steps": STEPS, "min_lr": MIN_LR, "max_lr": MAX_LR}
MIN_FALL = 0.02  # a smoothed loss that fell less than this share of its start never really fell


@dataclass
class Sweep:
    """One range test: the rate and loss of every step (raw and smoothed) and its suggestion."""

    seed: int
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    stop: str  # why it ended: "diverged" or "max_lr"
    seconds: float = 0.0


@dataclass
class LRFind:
    """The finder's result: every test, the band of their suggestions and the suggested rates."""

    lr: float  # the suggested base rate (train.lr)
    head_lr: float | None  # the head's rate at that base rate (its ratio kept); None: the head trains at lr
    band: tuple[float, float, float]  # min, median, max of the tests' suggestions
    unstable: bool
    sweeps: list[Sweep]
    settings: dict[str, Any] = field(default_factory=dict)  # min_lr, max_lr, steps, strategy, ...
    notes: list[str] = field(default_factory=list)

    @property
    def decades(self) -> float:
        return math.log10(self.band[2] / self.band[0])

    def explain(self) -> str:
        lo, mid, hi = self.band
        head = f", head_lr {self.head_lr:.3g} (ratio kept)" if self.head_lr is not None else ""
        lines = [f"lr finder: suggested lr {self.lr:.3g}{head}; band over {len(self.sweeps)} seeded sweeps: "
                 f"{lo:.3g} .. {hi:.3g} (median {mid:.3g}, {self.decades:.2f} decades)"]
        if self.unstable:
            lines.append(f"  UNSTABLE: the sweeps disagree by more than {UNSTABLE_DECADES:g} decade; the loss "
                         "curve is noisy. Use more data or a larger batch, more steps (--steps), or choose from "
                         "the plot.")
        lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LRFind":
        return cls(**{**d, "band": tuple(d["band"]), "sweeps": [Sweep(**s) for s in d["sweeps"]]})

    @classmethod
    def read(cls, folder: str | Path) -> "LRFind | None":
        """The result saved in `folder` (a run folder of `lr: auto`, or an lr-find output), or None."""
        path = Path(folder) / RESULT_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def write(self, folder: str | Path, plot: bool = True) -> list[Path]:
        """Write lr_find.json (and lr_find.png, when matplotlib is installed) to `folder`; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / RESULT_FILE, json.dumps(self.to_dict(), indent=2))
        written = [folder / RESULT_FILE]
        if plot and plot_available():
            save_plot(self, folder / PLOT_FILE)
            written.append(folder / PLOT_FILE)
        return written


def find_lr(model, data, strategy, objective, settings: TrainSettings = TrainSettings(), *,
            sweeps: int | None = None, steps: int | None = None, min_lr: float | None = None,
            max_lr: float | None = None, augment: bool = True, progress: bool = False) -> LRFind:
    """Run `sweeps` range tests of `steps` steps from `min_lr` to `max_lr` (None: SWEEPS, STEPS, MIN_LR,
    MAX_LR); `model` is left as it was.

    `model` must have its head (`run.prepare_head`); `settings` give the batch size, optimizer, weight decay,
    precision, seed and the reference rates whose ratios are kept (unset ones: the strategy's defaults).
    """
    sweeps, steps = sweeps or SWEEPS, steps or STEPS
    min_lr, max_lr = min_lr or MIN_LR, max_lr or MAX_LR
    check_range(sweeps, steps, min_lr, max_lr)
    if model.head is None:
        raise ConfigError("the LR finder needs the model's head: call run.prepare_head(model, data) first")
    s, _ = with_rates(replace(settings, progress=False), strategy.default_rates(model.spec.modality))
    s, _ = with_schedule(s, model.spec.modality, len(data.train), strategy.name)
    if len(data.train) < s.batch_size:
        raise DataError(f"the training split has {len(data.train)} samples, fewer than one batch "
                        f"({s.batch_size}); lower train.batch_size or give more data")
    rng = torch.get_rng_state()
    try:
        tests = []
        for k in range(sweeps):
            t0 = time.perf_counter()
            test = range_test(model, data, strategy, objective, s, seed=s.seed + k, steps=steps, min_lr=min_lr,
                              max_lr=max_lr, augment=augment)
            test.seconds = round(time.perf_counter() - t0, 3)
            if progress:
                found = f"{test.suggestion:.3g}" if test.suggestion else "none"
                print(f"lr sweep {k + 1}/{sweeps} (seed {test.seed}): {len(test.lrs)} steps, ended by {test.stop}, "
                      f"suggestion {found}, {test.seconds:.1f}s")
            tests.append(test)
    finally:
        torch.set_rng_state(rng)
    return summarise(tests, s, dict(strategy=strategy.name, optimizer=s.optimizer, batch_size=s.batch_size,
                                    min_lr=min_lr, max_lr=max_lr, steps=steps, sweeps=sweeps,
                                    reference_lr=s.lr, reference_head_lr=s.head_lr))


def check_range(sweeps: int, steps: int, min_lr: float, max_lr: float) -> None:
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"the LR finder sweeps from min_lr up to max_lr: need 0 < min_lr < max_lr, got min_lr "
                          f"{min_lr:g} and max_lr {max_lr:g}; e.g. min_lr 1e-6, max_lr 10")
    if sweeps < 1 or steps < 10:
        raise ConfigError(f"the LR finder needs at least 1 sweep of at least 10 steps, got {sweeps} sweep(s) of "
                          f"{steps} steps; the defaults are {SWEEPS} sweeps of {STEPS} steps")


def range_test(model, data, strategy, objective, s: TrainSettings, *, seed: int, steps: int, min_lr: float,
               max_lr: float, augment: bool) -> Sweep:
    """One range test on a deep copy of `model`: rates min_lr * (max_lr / min_lr) ** (i / (steps - 1))."""
    torch.manual_seed(seed)
    net = copy.deepcopy(model)  # adapters (LoRA) change the model's structure: never touch the original
    strategy.apply(net, epoch=0)
    obj = copy.deepcopy(objective).with_terms(strategy.regularizers(net))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    obj.to(device)
    compute = Compute.prepare(s, net, device)
    groups = param_groups(strategy, net, 0, s, obj)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ConfigError(f"strategy {strategy.name!r} trains no parameters of this model, so there is no "
                          "learning rate to find; choose a strategy that trains something (linear-probe, full, ...)")
    optimizer = build_optimizer(groups, s.optimizer, s.lr, s.momentum)
    scale = [g["lr"] / s.lr for g in optimizer.param_groups]  # each group's rate relative to the base rate
    inputs = EpochInputs(net, data, cache=s.cache, augment=augment, views=s.cache_views, seed=seed,
                         cache_dir=s.cache_dir, bf16=compute.bf16_eval, channels_last=compute.channels_last,
                         batch_size=s.eval_batch_size, device=device, processes=1)
    ratio = max_lr / min_lr
    lrs: list[float] = []
    losses: list[float] = []
    stop = "max_lr"
    best, start, ema = math.inf, math.inf, None
    batches = _batches(inputs, net, s, seed)
    for i in range(steps):
        lr = min_lr * ratio ** (i / (steps - 1))
        for g, k in zip(optimizer.param_groups, scale):
            g["lr"] = lr * k
        plan, window = next(batches)
        loss = _step(plan, net, obj, optimizer, window, s, compute, device)
        if not math.isfinite(loss):
            stop = "diverged"
            break
        lrs.append(lr)
        losses.append(loss)
        # An EMA (short: about 5 steps) decides divergence online; the suggestion uses the centred smoothing.
        ema = loss if ema is None else 0.8 * ema + 0.2 * loss
        best = min(best, ema)
        start = ema if i == 0 else start
        # Diverged: back above the starting loss and well above the best (a relative test alone fires on
        # noise once the loss is near zero).
        if i >= 5 and ema > max(DIVERGE_FACTOR * best, start):
            stop = "diverged"
            break
    # About a quarter of a decade either side: wide enough for batch noise, narrow beside a decade-wide fall.
    smoothed = smooth(losses, window=max(2, round(steps / math.log10(ratio) / 4)))
    return Sweep(seed, lrs, losses, smoothed, suggest(lrs, smoothed), stop)


def _batches(inputs: EpochInputs, net, s: TrainSettings, seed: int):
    """(epoch plan, the `grad_accum` batches of one step), cycling epochs as long as the test needs."""
    epoch = 0
    while True:
        plan = inputs.for_epoch(net, net, 0)  # what trains does not change during a test: epoch 0's inputs
        augment_rng = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = plan.train.order(s.batch_size, shuffle=True, seed=seed, epoch=epoch)
        order = [idx for idx in order if len(idx) == s.batch_size] or order  # a short last batch is noisier
        for j in range(0, len(order) - s.grad_accum + 1, s.grad_accum):
            yield plan, [plan.train.batch(idx, augment_rng) for idx in order[j:j + s.grad_accum]]
        epoch += 1


def _step(plan, net, objective, optimizer, window, s: TrainSettings, compute: Compute, device) -> float:
    """One optimizer step over the batches of an accumulation window; returns their mean loss."""
    plan.step_model.train()
    total = 0.0
    with depthwise_in_fp32(net, enabled=compute.pinned):
        for batch in window:
            batch = batch.to(device, compute.channels_last)
            with autocast(device, compute.bf16_train and not plan.head_only):
                out = objective(plan.step_model, net, batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                return math.inf
            objective.backward(out, len(window), net)
            total += loss.item() / len(window)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if s.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average, `window` steps either side, shrinking at the ends (no lag)."""
    n = len(values)
    out = []
    for i in range(n):
        part = values[max(0, i - window):min(n, i + window + 1)]
        out.append(sum(part) / len(part))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The first rate at which the smoothed loss has fallen halfway from its start to its minimum; None when
    it fell by less than MIN_FALL of its start."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if len(finite) < 3:
        return None
    start = smoothed[finite[0]]
    i_min = min(finite, key=lambda i: smoothed[i])
    if smoothed[i_min] > (1 - MIN_FALL) * start:
        return None
    half = (start + smoothed[i_min]) / 2
    return next(lrs[i] for i in finite if smoothed[i] <= half)


def summarise(tests: list[Sweep], s: TrainSettings, settings: dict[str, Any]) -> LRFind:
    """The band of the tests' suggestions, the suggested rates and what to watch for."""
    found = sorted(t.suggestion for t in tests if t.suggestion is not None)
    if not found:
        raise ConfigError(f"the LR finder found no rate at which the loss falls in any of {len(tests)} sweeps "
                          f"from {settings['min_lr']:g} to {settings['max_lr']:g}; lower min_lr, check that the "
                          "data's labels are learnable, or set train.lr yourself")
    band = (found[0], statistics.median(found), found[-1])
    lr = band[1]
    notes = []
    if len(found) < len(tests):
        notes.append(f"{len(tests) - len(found)} sweep(s) found no falling loss and are left out of the band")
    falling = sum(t.smoothed.index(min(t.smoothed)) >= len(t.smoothed) - 2 for t in tests if t.smoothed)
    if falling:
        notes.append(f"in {falling} sweep(s) the loss was still falling at max_lr ({settings['max_lr']:g}): raise "
                     "max_lr")
    head = lr * s.head_lr / s.lr if s.head_lr is not None and s.head_lr != s.lr else None
    return LRFind(lr, head, band, math.log10(band[2] / band[0]) > UNSTABLE_DECADES, tests, settings, notes)


def plot_available() -> bool:
    """matplotlib is an optional extra (headstart[report]): without it only lr_find.json is written."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def save_plot(result: LRFind, path: str | Path) -> None:
    """Loss against learning rate for every sweep (raw faint, smoothed solid), the band shaded and the
    suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        lo, _, hi = result.band
        ax.axvspan(lo, hi, color="tab:green", alpha=0.15, label=f"band {lo:.2g} .. {hi:.2g}")
        top = -math.inf
        for t, color in zip(result.sweeps, _colors(len(result.sweeps))):
            ax.plot(t.lrs, t.losses, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(t.lrs, t.smoothed, color=color, linewidth=1.6, label=f"seed {t.seed} ({t.stop})")
            if t.suggestion is not None:  # each sweep's own suggestion, on its curve
                ax.plot([t.suggestion], [t.smoothed[t.lrs.index(t.suggestion)]], "o", color=color)
            finite = [v for v in t.smoothed if math.isfinite(v)]
            top = max(top, finite[0] * 1.5 if finite else top)
        ax.axvline(result.lr, color="black", linestyle="--", linewidth=1.2, label=f"suggested lr {result.lr:.3g}")
        ax.set_xscale("log")
        if math.isfinite(top):
            bottom = min(min(v for v in t.smoothed if math.isfinite(v)) for t in result.sweeps)
            ax.set_ylim(bottom - 0.05 * abs(bottom), top)
        ax.set_xlabel("learning rate (train.lr)")
        ax.set_ylabel("training loss")
        title = f"LR finder: {result.settings.get('strategy', '')}, {len(result.sweeps)} sweeps"
        ax.set_title(title + (" (UNSTABLE)" if result.unstable else ""))
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _colors(n: int) -> list:
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


__all__ = ["LRFind", "Sweep", "find_lr", "save_plot", "RESULT_FILE", "PLOT_FILE"]
