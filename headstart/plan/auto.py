"""`strategy: auto`: choose among linear probe, LP-FT, partial, LoRA and full fine-tuning for the user.

The choice reads the task and the data (samples per class, classes), a measured domain-shift signal (the
k-fold linear-probe accuracy of the frozen features, from one cached extraction pass that a linear probe
then reuses), the model's size, and a time budget. It writes its reasons. Where the budget leaves room, a
successive-halving race of the two leading candidates on a third of the data confirms the heuristic instead
of trusting it.

A budget is a promise about the whole command, from its start to the written results (test pass included):
with one, auto times real forward passes and training steps (`throughput.py`), charges what has been spent
already (loading, measuring, the race) and what must follow training (validation, test pass, report), and
picks the strategy and the epochs that fit what is left; the run's deadline (`run/deadline.py`) then stops
training early if the estimate was short.

Why these rules (evidence: the strategy grid and the auto suite in bench/results, and the literature):
- very few samples per class (< 10 for images, < 5 for text): fine-tuning everything overfits, yet the grid
  put partial fine-tuning of the last group above a linear probe at 1 and 5 per class (Fashion-MNIST 0.457 vs
  0.419, BBC 0.829 vs 0.802), so partial; a linear probe when even that does not fit;
- no rule picks a linear probe for features that already separate the task: one such (a linear-probe proxy
  >= 0.97) chose a probe on 1,000 handwritten digits that scored 0.927 against 0.976-0.981 for full
  fine-tuning (bench/results/time_to_accuracy.md, 2026-12-01 17:47); the proxy informs, the budget decides;
- text encoders (no BatchNorm) with 5 or more samples per class: full fine-tuning at the BERT rates (Devlin
  et al. 2019) for as many steps as fit, from 1.5 epochs' worth (TEXT_FULL_MIN_EPOCHS; the last epoch may end
  early, train.max_steps): the grid's BBC cells put it above LP-FT at 5 and 50 per class (0.840 vs 0.732, 0.921
  vs 0.905), and 1.5 epochs of it above 5 of partial on 3 of the suite's 4 text tasks. When less fits,
  partial fine-tuning of the last group for as many epochs as fit (one epoch of full fine-tuning scored at
  or below five of partial on all 4);
- images with FULL_PER_CLASS (120) or more samples per class: full fine-tuning, which re-fits BatchNorm and
  the early layers. The threshold sits between the grid's two points, so it is fitted in sample: digits at
  130 per class (full 0.958, LP-FT 0.925-0.947) and Fashion-MNIST at 100 (full 0.837, LP-FT 0.843-0.847);
- images with 10 to 120 per class: partial fine-tuning of the last two groups (partial_options), raced against
  LoRA where the budget allows. Partial was within 0.3 points of LP-FT or above it on 5 of the 6 such cells measured
  (strategy grid, auto_vs_grid, auto suite) at a third to half of its time; LoRA was best on the two tasks
  furthest from ImageNet (handwritten digits, blurred low-contrast clothing) and 2-5 points below partial on
  the two closest, so the race, not a rule, decides between them;
- large transformer encoders (> 80M parameters): LoRA, which keeps memory and checkpoints small (on a CPU it
  is not faster, so it is not chosen for speed);
- when fine-tuning does not fit the budget: partial fine-tuning of the last group,
  then a linear probe.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write_text
from ..data import DataSplits, make_batcher, stratified_split
from ..errors import ConfigError
from ..features import cached_features
from ..run.deadline import finish_seconds, parse_duration
from ..run.selection import proportion_se
from ..run.head_fit import MAX_FIT_ENTRIES
from ..run.settings import TrainSettings, with_schedule
from ..runtime import inference_placement
from .throughput import measure_throughput
from .transferability import linear_probe_proxy

# A training step of a head on cached features is Python overhead (objective, backward, AdamW, schedule):
# 0.7 ms here for the toy CNN's head, about 1 ms for a 1280-feature one.
HEAD_STEP_S = 1e-3
# A linear probe's fitted head (run/head_fit.py): seconds per training sample x feature x output of its L2 path
# (1,000 x 1,280 x 10 EfficientNet-Lite0 features of Fashion-MNIST: 0.5 s; 500 OpenCV digits: 0.3 s).
HEAD_FIT_S = 5e-8
# A run's first training steps build oneDNN's kernels: about this many steps' time over the timed rate (LP-FT
# on the toy task of tests/test_budget.py pays it when its fine-tuning phase starts).
WARMUP_STEPS = 3
FULL_PER_CLASS = 120  # images: from this many samples per class, full fine-tuning (see the rules above)
DECISION_FILE = "auto.json"

# Peak AdamW rates per modality. Pretrained CNNs fine-tune at 1e-3 with the head at the same rate, as the
# strategies' own defaults: auto's head at 1e-2 scored 2.2 points below the grid's partial on 20 images per
# class and 0.8 below its full on digits, and within 0.2 of it on three other suite tasks (bench/auto_suite.py).
# BERT-family encoders at 5e-5 with the head at 1e-3, as the BBC reference recipe (bench/text_bbc.py) and
# `full`'s defaults. A head alone on cached features (a linear probe) at 1e-2; adapters start at their identity
# and need larger rates than the weights they adapt.
RATES = {"image": {"lr": 1e-3, "head_lr": 1e-3, "adapter_lr": 3e-3, "probe_lr": 1e-2},
         "text": {"lr": 5e-5, "head_lr": 1e-3, "adapter_lr": 1e-3, "probe_lr": 1e-2}}


# A text run of fewer optimizer steps than this gets its head at the probe's rate: on 250 BBC articles, one
# epoch (16 steps) with the head at 1e-3 predicted one class (test accuracy 0.196), two epochs (32 steps) at
# 1e-2 reached 0.953; the reference recipe's 224 steps at 1e-3 reach 0.986 (bench/auto_suite.py, text_bbc.py).
# Images do not need it: 35 steps of partial on 20 per class with the head at 1e-3 scored 0.784, at 1e-2 0.762.
FEW_STEPS = 100
# Text fine-tuned whole trains as many steps as fit, from this many epochs' worth (train.max_steps ends the
# last one early). On the auto suite's four text tasks (2026-12-02, bench/results/text_fraction.md) 1.5 epochs
# of full fine-tuning scored above 5 epochs of partial on 3 of 4 (+1.2 to +3.7 points) and 1.2 below on one,
# in less time; 1 epoch scored at or below partial on all 4.
TEXT_FULL_MIN_EPOCHS = 1.5


def in_steps(strategy: str, modality: str) -> bool:
    """Whether auto plans the run in optimizer steps (which may end inside an epoch), not whole epochs."""
    return strategy == "full" and modality == "text"


def learning_rates(strategy: str, modality: str, steps: int | None = None) -> dict[str, float]:
    """The `lr` and `head_lr` auto trains a strategy with (the user's explicit ones win); `steps`, the run's
    optimizer steps where known, speeds a text head up in a short run (FEW_STEPS)."""
    rates = RATES.get(modality, RATES["image"])
    probe = rates["probe_lr"]
    if strategy == "linear-probe":
        return {"lr": probe, "head_lr": probe}
    short = modality == "text" and steps is not None and steps < FEW_STEPS
    head = probe if short else rates["head_lr"]
    return {"lr": rates["adapter_lr"] if strategy == "lora" else rates["lr"], "head_lr": head}


def run_steps(n_train: int, batch_size: int | None, epochs: int | None, max_steps: int | None = None) -> int | None:
    """Optimizer steps of a run of `epochs` over `n_train` samples, capped by `max_steps` (None when the epochs
    are not planned)."""
    return min(epochs * epoch_steps(n_train, batch_size), max_steps or math.inf) if epochs else None


def epoch_steps(n_train: int, batch_size: int | None) -> int:
    """Optimizer steps of one epoch over `n_train` samples."""
    return math.ceil(n_train / (batch_size or 32))


def parse_budget(budget: str | float | int | None) -> float | None:
    """'90s', '10m', '1.5h' or a number of seconds -> seconds."""
    return parse_duration(budget, "the budget")


@dataclass
class Signals:
    """What the decision reads."""

    n_train: int
    n_val: int
    num_classes: int
    per_class: float  # median training samples per class
    params_m: float  # backbone parameters, millions
    modality: str
    probe_accuracy: float | None = None  # k-fold linear-probe accuracy of the frozen features
    n_test: int = 0
    # Measured seconds per sample (throughput.py), with a budget only: feature extraction, evaluation, and a
    # training step by kind ("full", "partial", "lora").
    extract_s: float | None = None
    eval_s: float | None = None
    step_s: dict[str, float] | None = None
    batch_size: int | None = None  # the batch the steps were timed at
    cached_steps: tuple[str, ...] = ()  # kinds that train on cached activations of their frozen layers
    task: str = "classification"  # or "regression", "multilabel" (from the targets)
    num_features: int = 0  # the backbone's pooled features (a fitted head's cost grows with them)


@dataclass
class Decision:
    strategy: str
    options: dict[str, Any]
    train: dict[str, Any]
    reasons: list[str]
    estimates_s: dict[str, float]
    signals: dict[str, Any] = field(default_factory=dict)
    race: list[dict[str, Any]] | None = None
    augment: bool | None = None  # False: train without augmentation (None: as the run was asked)
    contender: dict[str, Any] | None = None  # the raw-input contender's verdict after training (contender.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> str:
        lines = [f"auto chose {self.strategy} {self.options or ''} with {self.train}"]
        lines += [f"  - {r}" for r in self.reasons]
        lines += ["  estimated seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in self.estimates_s.items())]
        return "\n".join(lines)


def estimates(s: Signals, epochs: float) -> dict[str, float]:
    """Seconds each candidate still needs, from the measured throughput (empty when nothing was timed).

    `epochs` may end inside an epoch (a run capped by train.max_steps): each epoch begun pays its validation.

    Every candidate pays a validation pass per epoch and the finish: the test pass (whose outputs the report
    reuses) and the fixed costs of the bundle and the report. The linear probe (its head fitted in one pass)
    and LP-FT's first phase run on cached features; the training features are cached already when the shift
    signal was measured. LoRA's step, when not timed, is charged as a full one (on a CPU it is not cheaper).
    """
    if s.eval_s is None or s.extract_s is None or not s.step_s:
        return {}
    val = s.n_val * s.eval_s
    finish = s.n_test * s.eval_s + finish_seconds(s.params_m)
    features = (0.0 if s.probe_accuracy is not None else s.n_train * s.extract_s) + s.n_val * s.extract_s
    head_epoch = math.ceil(s.n_train / (s.batch_size or 32)) * HEAD_STEP_S  # a step on cached features
    # The linear probe's head is fitted where its problem is convex (run/head_fit.py), else trained by epochs.
    fitted = s.task in ("classification", "regression") and s.n_train * s.num_features <= MAX_FIT_ENTRIES
    probe_head = s.n_train * s.num_features * max(s.num_classes, 1) * HEAD_FIT_S if fitted else epochs * head_epoch

    def train(kind: str, e: float) -> float:
        step = s.step_s.get(kind, s.step_s["full"])
        # + the first steps, which build the backward kernels: throughput.py times steps after a warm-up one
        warmup = WARMUP_STEPS * (s.batch_size or 32) * step
        if kind in s.cached_steps:  # one pass through the frozen layers, then epochs on their cached outputs
            # (validation too: a forward through the trainable stages, about a third of a step)
            extract = (s.n_train + s.n_val) * s.extract_s
            return extract + e * s.n_train * step + math.ceil(e) * s.n_val * step / 3 + warmup
        return e * s.n_train * step + math.ceil(e) * val + warmup

    return {"linear-probe": features + probe_head + finish,
            "partial": train("partial", epochs) + finish,
            "lp-ft": features + head_epoch + train("full", max(math.ceil(epochs) - 1, 1)) + finish,
            "full": train("full", epochs) + finish,
            "lora": train("lora", epochs) + finish}


def affordable(s: Signals, name: str, budget_s: float | None, epochs: int) -> int:
    """The most epochs (up to `epochs`) of strategy `name` whose estimate fits `budget_s` seconds; 0 if none."""
    return affordable_steps(s, name, budget_s, epochs) // epoch_steps(s.n_train, s.batch_size)


def affordable_steps(s: Signals, name: str, budget_s: float | None, epochs: int) -> int:
    """The most optimizer steps (up to `epochs` whole epochs) of strategy `name` whose estimate fits `budget_s`
    seconds; 0 if not one step does."""
    per_epoch = epoch_steps(s.n_train, s.batch_size)
    fits = lambda k: budget_s is None or estimates(s, k / per_epoch)[name] <= budget_s  # noqa: E731
    low, high = 0, epochs * per_epoch  # the estimate grows with the steps: bisect for the last that fits
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def planned_length(s: Signals, steps: int) -> dict[str, int]:
    """`epochs`, and `max_steps` where `steps` ends inside an epoch, for a run of `steps` optimizer steps."""
    per_epoch = epoch_steps(s.n_train, s.batch_size)
    epochs = math.ceil(steps / per_epoch)
    return {"epochs": epochs} | ({"max_steps": steps} if steps < epochs * per_epoch else {})


def plain_inputs(modality: str) -> bool | None:
    """False where auto trains without augmentation (images; see decide()), None where it keeps the run's."""
    return False if modality == "image" else None


def decide(s: Signals, budget_s: float | None, epochs: int | None = None, augment: bool | None = None) -> Decision:
    """The heuristic choice (pure: same signals, budget and epochs give the same decision). `augment`, the
    user's explicit data.augment, is kept (None: auto's choice)."""
    reasons: list[str] = []
    epochs = epochs or 5
    est = estimates(s, epochs)
    if budget_s is not None and not est:
        raise ValueError("decide() with a budget needs measured throughput: Signals from measure(..., timing=settings)")
    if budget_s is not None and budget_s < estimates(s, 1)["linear-probe"]:
        least = estimates(s, 1)["linear-probe"]
        raise ConfigError(f"the budget leaves {max(budget_s, 0):.0f}s after loading and measuring, too little to "
                          f"train anything here: even a linear probe needs about {least:.0f}s "
                          f"({s.n_train + s.n_val + s.n_test} samples through a {s.params_m:.1f}M-parameter "
                          f"backbone at {1 / s.extract_s:.0f} samples/s, a training step at "
                          f"{1 / s.step_s['full']:.0f} samples/s). Raise the budget or use fewer samples.")

    def affordable_epochs(name: str) -> int:
        return affordable(s, name, budget_s, epochs)

    probe = s.probe_accuracy
    train: dict[str, Any] = {}
    options: dict[str, Any] = {}
    # Text encoders fine-tune whole from 5 per class (the grid's BBC cell at 5 per class: full 0.840, partial
    # 0.829, linear probe 0.802); images need 10 (Fashion-MNIST at 1 per class: full 0.336, partial 0.457).
    few_shot = s.per_class < (5 if s.modality == "text" else 10)
    per_epoch = epoch_steps(s.n_train, s.batch_size)
    full_text_steps = affordable_steps(s, "full", budget_s, epochs) if in_steps("full", s.modality) else 0
    if few_shot and affordable_epochs("partial") >= 2:
        choice, options = "partial", partial_options(s.modality, few_shot=True)
        train["epochs"] = affordable_epochs("partial")
        reasons.append(f"{s.per_class:.0f} samples per class: too few to fine-tune everything; the last group "
                       "adapts (the grid: above a linear probe at 1 and 5 per class)")
    elif few_shot:
        choice = "linear-probe"
        reasons.append(f"{s.per_class:.0f} samples per class and no time for more: a linear probe")
    elif s.modality == "text" and s.params_m > 80 and affordable_epochs("lora") >= 2:
        choice, options = "lora", {"lora_r": 8}
        train["epochs"] = affordable_epochs("lora")
        reasons.append(f"{s.params_m:.0f}M-parameter encoder: LoRA keeps memory and checkpoints small")
    elif s.modality == "text" and full_text_steps >= TEXT_FULL_MIN_EPOCHS * per_epoch:
        choice = "full"
        train.update(planned_length(s, full_text_steps))
        reasons.append(f"text encoder, {s.per_class:.0f} samples per class: full fine-tuning at the BERT rates "
                       f"(Devlin et al. 2019; the grid put it above LP-FT on BBC News), "
                       f"{full_text_steps} steps ({full_text_steps / per_epoch:.1f} epochs) fit the budget")
    elif s.per_class >= FULL_PER_CLASS and affordable_epochs("full") >= 3:
        choice = "full"
        train["epochs"] = affordable_epochs("full")
        large_shift = probe is not None and probe < 0.6
        shift = f"; large domain shift (linear-probe proxy {probe:.3f} < 0.6)" if large_shift else ""
        reasons.append(f"{s.per_class:.0f} samples per class{shift}: full fine-tuning re-fits BatchNorm and the "
                       f"early layers that LP-FT keeps, {train['epochs']} epochs fit the budget")
    elif affordable_epochs("partial") >= 2:
        choice, options = "partial", partial_options(s.modality)
        train["epochs"] = affordable_epochs("partial")
        if s.modality == "image" and s.per_class < FULL_PER_CLASS:
            reasons.append(f"{s.per_class:.0f} samples per class: partial fine-tuning of the last two groups (partial "
                           "was at or near the top of every image cell from 10 to 100 per class), "
                           f"{train['epochs']} epochs fit the budget")
        else:
            reasons.append("full fine-tuning does not fit the budget: the last group trains")
    else:
        choice = "linear-probe"
        reasons.append("only a linear probe fits the budget")
    if choice == "linear-probe" and budget_s is not None:
        train["epochs"] = max(affordable_epochs("linear-probe"), 1)
    train.update(learning_rates(choice, s.modality, run_steps(s.n_train, s.batch_size, train.get("epochs"),
                                                               train.get("max_steps"))))
    # Flips and crops change a regression target that depends on the geometry (an angle, a position, a size)
    # without changing the label: on digits rotated by a known angle, full fine-tuning with them reached
    # R^2 0.58 where ridge regression on the pixels reached 0.97 (bench/auto_suite.py).
    # Images train on the plain pictures in auto's short runs: in 5-epoch runs on the suite's data they scored
    # above flips and crops on 6 of 9 cells (+0.9 to +4.3 points; flips are wrong for digits) and below on 3
    # (-0.5 to -1.2), and partial ran in half the time, its frozen prefix cached once
    # (bench/results/augmentation_probe.md).
    if augment is not None:  # the user's data.augment wins
        reasons.append(f"{'flips and crops' if augment else 'no flips or crops'}: data.augment is "
                       f"{str(augment).lower()}")
    else:
        augment = plain_inputs(s.modality)
        if augment is False and s.task == "regression":
            reasons.append("image regression: no flips or crops, which would change the target without its label")
        elif augment is False:
            reasons.append("no flips or crops: in runs of a few epochs they cost more than they add "
                           "(better on 6 of 9 measured cells without them), and partial's frozen layers are cached")
    proxy = f", linear-probe proxy {probe:.3f}" if probe is not None else ""
    reasons.append(f"signals: {s.n_train} training samples, {s.num_classes} classes, "
                   f"{s.params_m:.1f}M parameters{proxy}")
    return Decision(choice, options, train, reasons, {k: round(v, 1) for k, v in est.items()}, asdict(s),
                    augment=augment)


def measure(model, data, *, seed: int = 0, cache_dir=None, max_probe: int = 4000,
            timing: TrainSettings | None = None, left_s: float | None = None, augment: bool | None = None
            ) -> Signals:
    """Signals of a model and data set; the frozen features go through the feature cache (one pass).

    With `timing` (the run's settings; given with a budget) the throughput is measured too. Under a budget
    (`left_s`, the seconds left) the shift signal is skipped: no rule reads it any more (decide()), and its
    extraction pass took 1.5-3.4 s of the auto suite's 30-60 s budgets. Steps are timed with augmentation
    where the run will have it (`augment`, the user's data.augment; None: as auto decides).
    """
    train = data.train
    targets = train.targets
    counts = torch.bincount(targets) if targets.ndim == 1 and not targets.is_floating_point() else None
    per_class = float(counts[counts > 0].median()) if counts is not None else float(len(train))
    s = Signals(len(train), len(data.val) if data.val is not None else 0, len(data.classes), per_class,
                sum(p.numel() for p in model.backbone.parameters()) / 1e6, model.spec.modality,
                n_test=len(data.test) if data.test is not None else 0, task=model.task,
                num_features=model.spec.num_features)
    if timing is not None:
        kinds = {"full": ("full", {}), "partial": ("partial", partial_options(s.modality))}
        if s.modality == "text" and s.params_m > 80:
            kinds["lora"] = ("lora", {"lora_r": 8})
        augmented = plain_inputs(s.modality) is not False if augment is None else augment
        speed = measure_throughput(model, train, timing, kinds, augment=augmented)
        s.extract_s, s.eval_s, s.step_s, s.batch_size = speed.extract_s, speed.eval_s, speed.step_s, timing.batch_size
        s.cached_steps = speed.cached
    if counts is None or len(train) > max_probe:
        return s  # regression / multi-label, or too large to probe cheaply: decide without the shift signal
    if left_s is not None:
        return s
    placement = inference_placement(model)
    feats, _ = cached_features(model.backbone, model.spec, make_batcher(train, model.spec, train=False),
                               train.fingerprint(), cache_dir=cache_dir, bf16=placement.bf16,
                               channels_last=placement.channels_last)
    if counts.min() >= 2:
        s.probe_accuracy = linear_probe_proxy(feats, targets, folds=min(3, int(counts[counts > 0].min())), seed=seed)
    return s


RACE_ORDER = ("lp-ft", "full", "partial", "linear-probe")  # the runner-up is the next of these that fits
# ... except where the evidence names another: images at 10-120 per class, partial against LoRA (see the rules).
RUNNER_UP = {("image", "partial"): "lora"}
# LP-FT: the probe phase runs on cached features (nearly free), then everything trains at a tenth of the rates
# (lp-ft keeps BatchNorm statistics frozen by default; see its docstring for the measurement).
LP_FT_OPTIONS = {"lp_epochs": 1, "ft_lr_scale": 0.1}
RACE_SLACK_S = 3.0  # the least a race contender may overrun its estimate by (see race())


def partial_options(modality: str, few_shot: bool = False) -> dict[str, Any]:
    """What auto's partial fine-tuning trains: the last two layer groups of an image backbone, the last one of a
    text encoder or of a few-shot image task. Images train on plain pictures, so the frozen prefix is cached and
    a second group costs little; across 5 runs of 5 epochs on the suite's image tasks the second group gained
    1.8 to 4.0 points on 3 (handwritten digits, blurred clothing, Fashion-MNIST at 128 px) and lost 0.6 and 0.8
    on 2, within the val noise (bench/results/partial_depth.md). Text encoders and few-shot tasks keep the
    configuration the grid measured."""
    return {"trainable": "last:2" if modality == "image" and not few_shot else "last:1"}


def lp_ft_options(modality: str) -> dict[str, Any]:
    """LP-FT's options: a tenth of the rates for CNNs (whose BatchNorm the probe's head depends on); text
    encoders have no BatchNorm and already fine-tune at a small rate (5e-5), so they keep it (the grid's BBC
    cell at a tenth: 0.905, below full fine-tuning's 0.921)."""
    return {**LP_FT_OPTIONS, "ft_lr_scale": 1.0} if modality == "text" else dict(LP_FT_OPTIONS)


def race(model, data, decision: Decision, budget_s: float, epochs: int, *, fit: Callable[..., Any], seed: int = 0,
         cache_dir=None, judge: dict[str, Any] | None = None) -> None:
    """Successive halving between the heuristic's choice and its runner-up, when the budget leaves room.

    Both train on a stratified third of the training set for the epochs the final run will train, so each
    runs its whole schedule (warm-up and decay included); the better validation score wins (ties keep the
    heuristic's choice): the run's own metric (`judge`: ``{"metric": "f1", "positive_class": ...}``), accuracy
    by default. A shorter race misleads: after 2 epochs on a third of digits, LP-FT led full
    fine-tuning 0.772 to 0.621 because it starts from a trained head, yet the full runs ended 0.947 to 0.958
    the other way. The race's estimated cost plus the winner's full run must fit the budget, otherwise the
    heuristic stands. `fit` trains each contender (`hs.fit`'s signature). Updates `decision` in place.
    """
    est = decision.estimates_s
    # LP-FT's probe phase takes the first epoch: in a 1-epoch run it would never fine-tune.
    modality = decision.signals.get("modality")
    order = (RUNNER_UP[modality, decision.strategy],) if (modality, decision.strategy) in RUNNER_UP else RACE_ORDER
    others = [c for c in order if c != decision.strategy and est.get(c, math.inf) <= budget_s
              and not (c == "lp-ft" and decision.train.get("epochs", epochs) < 2)]
    if (not others or decision.strategy not in RACE_ORDER or data.val is None or data.train.targets.ndim != 1
            or data.train.targets.is_floating_point()):  # multi-label and regression: no accuracy to race by
        return
    # A third of the data can sit on the other side of a rule that depends on the data's size, and there the
    # race judges another regime: on a third of digits (43 per class) LP-FT beat full fine-tuning 0.869 to
    # 0.821, on all of it full won 0.958 to 0.925. The race runs only where the rules agree for both sizes.
    third = Signals(**{**decision.signals, "n_train": max(1, decision.signals["n_train"] // 3),
                       "per_class": decision.signals["per_class"] / 3, "n_test": 0})
    # The options count: at 20 images per class a third is few-shot, where partial trains one group, not two.
    small_rule, whole_rule = decide(third, None, epochs), decide(Signals(**decision.signals), None, epochs)
    if (small_rule.strategy, small_rule.options) != (whole_rule.strategy, whole_rule.options):
        regime = f"{small_rule.strategy} {small_rule.options}" if small_rule.options else small_rule.strategy
        decision.reasons.append(f"no race: a third of the data ({third.per_class:.0f} per class) is a different "
                                f"regime, where the rules choose {regime}")
        return
    contenders = [decision.strategy, others[0]]
    epochs = decision.train.get("epochs", epochs)
    small_est = estimates(third, epochs)
    race_cost = sum(small_est[c] for c in contenders) if small_est else 0.0
    if race_cost + max(est[c] for c in contenders) > budget_s:
        return
    _, third = stratified_split(data.train.targets, 1 / 3, seed)
    if len(third) < 2 * len(data.classes):  # a third of very few samples ranks noise, not strategies
        decision.reasons.append(f"no race: a third of the data is {len(third)} samples for {len(data.classes)} "
                                "classes")
        return
    small = DataSplits(data.train.subset(third), data.val, None, data.classes, data.name, data.modality)
    judge = {k: v for k, v in (judge or {}).items() if v is not None}
    score = f"val/{judge.get('metric', 'accuracy')}"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in contenders:
            torch.manual_seed(seed)
            options = decision.options if name == decision.strategy else (
                lp_ft_options(model.spec.modality) if name == "lp-ft" else
                partial_options(model.spec.modality) if name == "partial" else {})
            # Rates for the race's own length: a third of the data takes a third of the steps.
            steps = run_steps(len(small.train), decision.signals.get("batch_size"), epochs)
            train = {**({k: v for k, v in decision.train.items() if k != "max_steps"}  # a third's epochs are shorter
                        if name == decision.strategy else {}),
                     **learning_rates(name, model.spec.modality, steps)}
            # Each contender may overrun its estimate by half at most: the race must leave the winner its time.
            # A few seconds at least: a race run of a second is mostly fixed costs its estimate leaves out (the
            # first LoRA run imports PEFT, about 2 s), and a cut on those would judge a run that never trained.
            limit = {"time_limit": max(1.5 * small_est[name], small_est[name] + RACE_SLACK_S)} if small_est else {}
            run = fit(copy.deepcopy(model), small, name, out=f"{tmp}/{name}", progress=False, report=False,
                      cache_dir=cache_dir, seed=seed, augment=decision.augment is not False,  # as the run trains
                      **{**train, **options, **judge, **limit, "epochs": epochs})
            results.append({"strategy": name, "options": options, "train": train, "metric": score,
                            "val_score": run.best_metrics.get(score, float("nan")), "seconds": round(run.seconds, 1)})
    decision.race = results
    # Overrule the rules only on a difference larger than the score's standard error (as a proportion's): on BBC
    # at 5 per class a third of the data is 8 articles, and its race "found" LP-FT 10 points ahead of partial;
    # on the whole data LP-FT scored 10 points below.
    mine, other = results
    p = min(max((mine["val_score"] + other["val_score"]) / 2, 0.05), 0.95)
    margin = proportion_se(p, len(data.val))
    best = other if other["val_score"] > mine["val_score"] + margin else mine
    if best["strategy"] != decision.strategy:
        decision.reasons.append(f"race on a third of the data: {best['strategy']} ({score} {best['val_score']:.3f}) "
                                f"beat {decision.strategy} ({results[0]['val_score']:.3f}); switching")
        decision.strategy, decision.options = best["strategy"], best["options"]
        decision.train = {k: v for k, v in decision.train.items() if k == "epochs"} | best["train"]
    else:
        decision.reasons.append(f"race on a third of the data kept {decision.strategy} ({score} "
                                f"{mine['val_score']:.3f} vs {other['strategy']} {other['val_score']:.3f}; a switch "
                                f"needs more than {margin:.3f}, the score's standard error)")


def choose(model, data, budget: str | float | None = None, epochs: int | None = None, *, seed: int = 0,
           cache_dir=None, run_dir: str | Path | None = None, fit: Callable[..., Any] | None = None,
           judge: dict[str, Any] | None = None, settings: TrainSettings | None = None,
           started: float | None = None, augment: bool | None = None) -> Decision:
    """Measure, decide, and (with `run_dir`) write the decision and its reasons to `auto.json` there.

    A run folder that already holds a decision reuses it, so a resumed run keeps its choice. With a budget
    (counted from `started`, time.time(); default: now), the throughput is timed at the run's `settings`
    (batch size, precision), and the race trains its contenders with `fit` (`hs.fit`, which passes itself)
    and judges them by `judge` (the run's ``metric`` and ``positive_class``). After the race, the epochs are
    fitted again to the time then left. `augment` (the user's data.augment, None when unset) is kept.
    """
    if run_dir is not None and (Path(run_dir) / DECISION_FILE).is_file():
        saved = json.loads((Path(run_dir) / DECISION_FILE).read_text())
        return Decision(**saved)
    budget_s = parse_budget(budget)
    started = started if started is not None else time.time()
    left = lambda: budget_s - (time.time() - started) if budget_s is not None else None  # noqa: E731
    timing = None
    if budget_s is not None:
        timing, _ = with_schedule(settings or TrainSettings(), model.spec.modality, len(data.train), "full")
    signals = measure(model, data, seed=seed, cache_dir=cache_dir, timing=timing, left_s=left(), augment=augment)
    decision = decide(signals, left(), epochs, augment)
    if budget_s is not None:
        if fit is None:
            raise ValueError("choose() with a budget races candidates: pass fit=hs.fit")
        race(model, data, decision, left(), epochs or 5, fit=fit, seed=seed, cache_dir=cache_dir, judge=judge)
        refit_epochs(decision, left())
        s = Signals(**decision.signals)  # the rates for the run's final length (after the race and the refit)
        decision.train.update(learning_rates(decision.strategy, s.modality,
                                             run_steps(s.n_train, s.batch_size, decision.train.get("epochs"),
                                                       decision.train.get("max_steps"))))
    if run_dir is not None:
        atomic_write_text(Path(run_dir) / DECISION_FILE, json.dumps(decision.to_dict(), indent=2))
    return decision


def refit_epochs(decision: Decision, left_s: float) -> None:
    """After the race: the chosen strategy's length fitted to the seconds now left (never more than decided):
    whole epochs, or steps for a run planned in steps (text fine-tuned whole, see decide())."""
    s = Signals(**decision.signals)
    planned = decision.train.get("epochs")
    if planned is None or not decision.estimates_s:
        return
    per_epoch = epoch_steps(s.n_train, s.batch_size)
    fits = affordable_steps(s, decision.strategy, left_s, planned)
    if not in_steps(decision.strategy, s.modality):
        fits -= fits % per_epoch
    decision.estimates_s = {k: round(v, 1) for k, v in estimates(s, max(fits / per_epoch, 1)).items()}
    if fits >= run_steps(s.n_train, s.batch_size, planned, decision.train.get("max_steps")):
        return
    if fits < (2 if decision.strategy == "lp-ft" else 1) * per_epoch:  # LP-FT's first epoch is its probe phase
        decision.reasons.append(f"{left_s:.0f}s left after the race: no epoch of {decision.strategy} fits; "
                                "a linear probe on cached features instead")
        decision.strategy, decision.options = "linear-probe", {}
        decision.train = {k: v for k, v in decision.train.items() if k not in ("epochs", "max_steps")} | (
            learning_rates("linear-probe", s.modality))
        return
    decision.train = {k: v for k, v in decision.train.items() if k != "max_steps"} | planned_length(s, fits)
    decision.reasons.append(f"{left_s:.0f}s left after the race: {fits / per_epoch:.3g} epochs of "
                            f"{decision.strategy} fit")
