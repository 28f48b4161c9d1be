"""How fast this model runs on this machine: timed forward passes and training steps, for `auto`'s estimates.

FLOP counts turned into seconds by a fixed rate were off by up to 8x (a text encoder's fine-tune estimated at
990 s took 127 s): achieved FLOP/s depend on the operator mix (depthwise convolutions, attention), the
precision policy, the input size and the batch. So `auto` times the real thing instead: a forward pass as
extraction and evaluation run it, and training steps of each kind of strategy at the run's batch size and
input size, through the run's own batcher (decoding and augmentation included) and precision policy. A
warm-up step comes first (oneDNN builds its kernels on the first call); timing runs on a copy of the model,
under a forked random state, so the run itself is untouched.

A run without augmentation trains partial fine-tuning of a chain backbone on cached activations of its frozen
layers (run/inputs.py): one pass through them, then steps through the trainable stages alone. Its step is
timed that way too; timing it through the whole model put partial at 2-3x its real cost, and `auto` chose a
linear probe on Fashion-MNIST where 5 epochs of partial fitted (bench/results/time_to_accuracy.md).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from ..backbones.stages import frozen_prefix_length
from ..data import make_batcher
from ..fold import inference_module
from ..run.inputs import SuffixModel, chain_stages, prefix_activations
from ..run.optim import build_optimizer
from ..run.settings import TrainSettings
from ..run.trainer import Compute
from ..runtime import autocast, depthwise_in_fp32, inference_placement, to_device
from ..strategies import get_strategy

# The kinds of step timed when the caller names none: (strategy, options) each. auto names its own (its partial
# trains the last two groups of an image backbone); LoRA's step on a CPU is as dear as a full one apart from
# the optimizer's share.
KINDS = {"full": ("full", {}), "partial": ("partial", {"trainable": "last:1"})}


@dataclass
class Throughput:
    """Seconds per sample: feature extraction, evaluation, and a training step by kind."""

    extract_s: float
    eval_s: float
    step_s: dict[str, float]
    measured_s: float  # what measuring cost
    cached: tuple[str, ...] = ()  # kinds whose steps were timed on cached activations of the frozen layers


def sample_batch(n: int, batch_size: int, seed: int) -> torch.Tensor:
    """A seeded batch of `batch_size` distinct random training indices."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:batch_size]


FORWARD_SAMPLES = 32  # a forward pass is timed on this many samples (after 4 to warm up): the rate per sample
# at a batch of 32 is within a few percent of that at 128 here, and timing 128 texts cost seconds of the budget

# A single timing of a step of a few milliseconds is off by 25% from run to run here; one of a second is not.
# So cheap steps and passes are repeated until TIMED_S seconds of them were timed (between `least` and
# MOST_REPEATS times) and their mean is kept, as a run's time is the sum of its steps, slow ones included
# (the minimum of three underestimated a run by 35% in one CI run). Dear steps (a text encoder's) are timed
# the least number of times, as before.
TIMED_S = 0.3
MOST_REPEATS = 20


def mean_seconds(run_once, least: int) -> float:
    """The mean of what `run_once(i)` returns (seconds per sample), over `least` calls, or more while the
    calls so far took less than TIMED_S seconds of wall time."""
    seconds: list[float] = []
    start = time.perf_counter()
    while len(seconds) < least or (time.perf_counter() - start < TIMED_S and len(seconds) < MOST_REPEATS):
        seconds.append(run_once(len(seconds)))
    return sum(seconds) / len(seconds)


def time_forward(model, train, batch_size: int, folded: bool) -> tuple[float, bool]:
    """Seconds per sample of a no-grad forward pass: through the folded inference copy of the backbone as
    feature extraction runs it (`folded`), or through the whole model as evaluation does; and whether the
    folded copy is the backbone itself (nothing to fold, as in a text encoder: the two passes then cost the
    same, up to the head)."""
    placement = inference_placement(model)
    batcher = make_batcher(train, model.spec, train=False)
    size = min(batch_size, FORWARD_SAMPLES, len(train))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run, unchanged = model, False
            warm = sample_batch(len(train), min(4, size), seed=1)
            if folded:
                sample = to_device(batcher.inputs(warm[:2]), placement.device, placement.channels_last)
                frozen = inference_module(model.backbone, lambda m: m.forward_features(sample))
                run, unchanged = frozen.forward_features, frozen is model.backbone

            def forward(idx: torch.Tensor) -> float:
                x = to_device(batcher.inputs(idx), placement.device, placement.channels_last)
                t = time.perf_counter()
                with autocast(placement.device, placement.bf16):
                    run(x)
                return (time.perf_counter() - t) / len(idx)

            forward(warm)  # oneDNN builds its kernels on the first call
            return mean_seconds(lambda i: forward(sample_batch(len(train), size, seed=i)), least=1), unchanged
    finally:
        model.train(was_training)


def cached_suffix(trial, train, batch_size: int, compute: Compute):
    """(suffix model, a batch of cached prefix activations) when the run would train `trial` on cached
    activations of its frozen leading stages (as run/inputs.py's PrefixCache does), else None."""
    stages = chain_stages(trial, train)
    if stages is None:
        return None
    trial.train()  # the BN policy decides which stages act the same in train mode
    k = frozen_prefix_length(stages)
    if k == 0:
        return None
    idx = sample_batch(len(train), batch_size, seed=0)
    acts = prefix_activations(stages[:k], make_batcher(train.subset(idx), trial.spec, train=False),
                              bf16=compute.bf16_train, channels_last=compute.channels_last, batch_size=batch_size)
    return SuffixModel(trial, stages[k:]), acts


def time_steps(model, train, settings: TrainSettings, name: str, options: dict, steps: int = 3,
               augment: bool = True) -> tuple[float, bool]:
    """Seconds per sample of a training step (batch assembly, forward, backward, the run's optimizer) of a copy
    of `model` with the trainable set of strategy `name` with `options`, and whether the step ran on cached
    activations of the frozen layers (without augmentation, where the run caches them)."""
    trial = copy.deepcopy(model)
    get_strategy(name, **options).apply(trial, epoch=0)
    device = torch.device("cpu")
    compute = Compute.prepare(settings, trial, device)
    params = [p for p in trial.parameters() if p.requires_grad]
    # The run's own optimizer (fused AdamW by default): the per-tensor AdamW this used to time cost MiniLM 80 ms
    # a step more, and the estimates put full fine-tuning of tweets at 1.5x its real time.
    optimizer = build_optimizer([{"params": params}], settings.optimizer, lr=1e-12)  # a negligible change
    batch_size = min(settings.batch_size, len(train))
    suffix = None if augment or settings.cache == "off" else cached_suffix(trial, train, batch_size, compute)
    batcher = make_batcher(train, trial.spec, train=True, augment=augment)
    rng = torch.Generator().manual_seed(0)
    trial.train()

    def step(i: int) -> float:
        idx = sample_batch(len(train), batch_size, seed=i)
        t = time.perf_counter()
        if suffix is None:
            run, inputs = trial, batcher.batch(idx, rng).to(device, compute.channels_last).inputs
        else:  # the activations are the same tensor each step: the cost does not depend on their values
            run, inputs = suffix[0], suffix[1]
        with depthwise_in_fp32(trial, enabled=compute.pinned), autocast(device, compute.bf16_train):
            out = run(inputs)
        out.float().logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) / len(idx)

    step(MOST_REPEATS)  # the warm-up step builds the backward kernels
    return mean_seconds(step, least=steps), suffix is not None


def measure_throughput(model, train, settings: TrainSettings, kinds: dict[str, tuple[str, dict]] | None = None,
                       augment: bool = True) -> Throughput:
    """Time a forward pass and each kind of training step (`kinds`: name -> (strategy, options); KINDS by
    default) on `train` samples (a warm-up and at least three timed steps of each kind, a small warm-up forward
    batch and at least one timed one), the steps with or without the run's augmentation (`augment`)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        extract, unchanged = time_forward(model, train, settings.eval_batch_size, folded=True)
        # Nothing folded: evaluation runs the same backbone (a text encoder's pass took 0.6 s more to time)
        evaluate = extract if unchanged else time_forward(model, train, settings.eval_batch_size, folded=False)[0]
        timed = {kind: time_steps(model, train, settings, *how, augment=augment)
                 for kind, how in (kinds or KINDS).items()}
    return Throughput(extract, evaluate, {k: t[0] for k, t in timed.items()}, time.perf_counter() - start,
                      cached=tuple(k for k, t in timed.items() if t[1]))
