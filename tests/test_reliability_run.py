"""Reliability of a run (issue 19): one seed one model, a diverging run stops with a message, write failures
surface within an epoch, run folders are never clobbered, locked while in use, and tidy after a kill."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import headstart as hs
from headstart.data import from_arrays
from headstart.errors import ConfigError, TrainingError
from headstart.objectives import CrossEntropy, Objective, TaskTerm
from headstart.run import RunFolder, TrainSettings
from headstart.run import fit as run_fit
from headstart.run.folder import RunFolder as Folder
from headstart.strategies import get_strategy
from conftest import separable_images

FAST = dict(progress=False, batch_size=8, eval_batch_size=32, precision="fp32")


def test_same_seed_same_model_whatever_the_global_rng(tiny_data, tmp_path):
    """The head is created inside fit from the run's seed, not from whatever state the global RNG is in
    (a new process starts from a random one)."""
    runs = []
    for i, noise in enumerate((123, 456)):
        torch.manual_seed(0)
        model = hs.create_model("toy:cnn")  # no head yet: fit sizes it from the data
        torch.manual_seed(noise)  # another process, other imports: another global RNG state
        run = hs.fit(model, tiny_data, "full", epochs=1, lr=0.01, out=tmp_path / str(i), **FAST)
        runs.append((run.history[0]["train/loss"], model.head[0].weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_a_diverging_run_stops_with_a_message_and_no_nan_bundle(tiny_data, tmp_path):
    with pytest.raises(TrainingError, match=r"diverged.*epoch 1.*train\.lr"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=2, lr=float("inf"), out=tmp_path / "r",
               **FAST)
    assert not (tmp_path / "r" / "best").exists()  # no epoch ended: nothing was kept as "best"


class NaNAtStep:
    """A term that is NaN on chosen steps (counted over calls): a stand-in for a bad batch."""

    name = "nan_at"

    def __init__(self, steps):
        self.steps, self.calls = set(steps), 0

    def __call__(self, step):
        self.calls += 1
        value = step.features.sum() * 0
        return value + float("nan") if self.calls in self.steps else value


@pytest.mark.parametrize("allowed", [0, 2])
def test_bad_steps_are_skipped_up_to_the_allowance(tiny_data, tmp_path, allowed):
    torch.manual_seed(0)
    model = hs.create_model("toy:cnn", 3)
    objective = Objective([TaskTerm(CrossEntropy()), NaNAtStep({2, 5})])
    settings = TrainSettings(epochs=1, batch_size=8, progress=False, precision="fp32", max_bad_steps=allowed)
    if allowed < 2:
        with pytest.raises(TrainingError, match="loss is nan at epoch 1, step 2"):
            run_fit(model, tiny_data, get_strategy("full"), objective, settings, tmp_path / "r")
        return
    run = run_fit(model, tiny_data, get_strategy("full"), objective, settings, tmp_path / "r")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert run.best_epoch == 1 and torch.isfinite(torch.tensor(run.history[0]["train/loss"]))


def test_a_failing_checkpoint_write_stops_the_run_at_the_next_epoch(tiny_data, tmp_path, monkeypatch):
    def disk_full(self, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Folder, "save_checkpoint", disk_full)
    with pytest.raises(TrainingError, match=r"could not write the checkpoint .*MB\).*No space left"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=6, out=tmp_path / "r", **FAST)
    rows = hs.run.read_metrics(tmp_path / "r")
    assert len(rows) <= 2, "the run went on for epochs after its checkpoint could not be written"


def test_a_folder_with_results_or_a_file_is_never_written_over(tiny_data, tmp_path):
    (tmp_path / "r" / "best").mkdir(parents=True)
    (tmp_path / "r" / "best" / "model.safetensors").write_text("the user's earlier model")
    with pytest.raises(ConfigError, match="already holds a run"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "r", **FAST)
    assert (tmp_path / "r" / "best" / "model.safetensors").read_text() == "the user's earlier model"
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "file", **FAST)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_folder_in_use_is_refused_and_released_after(tmp_path):
    record = {"strategy": {}, "train": {}}
    held = RunFolder.open(tmp_path / "r", record)
    with pytest.raises(ConfigError, match=f"in use by another process \\(PID {os.getpid()}\\)"):
        RunFolder.open(tmp_path / "r", record, resume=True)
    held.close()
    RunFolder.open(tmp_path / "r", record, resume=True).close()  # released: a later process may resume


def test_resume_tidies_what_a_killed_run_left(tiny_data, tmp_path):
    args = dict(epochs=2, lr=0.01, **FAST)
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", out=tmp_path / "r", **args)
    run = tmp_path / "r"
    (run / ".metrics.jsonl.abc.tmp").write_text("half")  # killed atomic writes
    (run / "checkpoints" / ".last.pt.x.tmp").write_text("half")
    os.replace(run / "best", run / "best.old")  # killed between the two renames of the best bundle's swap
    (run / "best.new").mkdir()
    folder = RunFolder.open(run, {"strategy": {}, "train": {}}, resume=True)
    folder.close()
    assert not list(run.glob("**/.*.tmp"))
    assert (run / "best" / "model.safetensors").is_file() and not (run / "best.old").exists()
    assert not (run / "best.new").exists()
    assert hs.load(run).model is not None


def test_resume_on_other_data_or_another_model_is_refused_with_a_message(tiny_data, tmp_path):
    args = dict(epochs=2, lr=0.01, **FAST)
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", out=tmp_path / "r", **args)
    saved = json.loads((tmp_path / "r" / "run.json").read_text())
    assert set(saved["data"]) == {"train", "val", "test"} and saved["sessions"][0]["versions"]["torch"]
    x, y = separable_images(seed=5)
    other = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")
    with pytest.raises(ConfigError, match="other data: the .*train"):
        hs.fit(hs.create_model("toy:cnn", 3), other, "full", out=tmp_path / "r", resume=True, **args)
    with pytest.raises(ConfigError, match="different settings.*model.backbone"):
        hs.fit(hs.create_model("toy:mlp", 3), tiny_data, "full", out=tmp_path / "r", resume=True, **args)


def test_a_step_that_cannot_fit_in_memory_is_refused_before_training(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("headstart.run.trainer.available_bytes", lambda device: 50_000_000)  # 50 MB free
    with pytest.raises(ConfigError, match=r"needs about .* GB .*batch_size 100000.*at most about \d+"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "r",
               **{**FAST, "batch_size": 100_000})
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    run = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "s", **FAST)
    assert run.best_epoch == 1  # a batch that fits trains as before


def test_a_run_that_learns_nothing_ends_with_a_warning_naming_the_rate(tiny_data, tmp_path):
    with pytest.warns(UserWarning, match=r"training loss barely moved in 3 epochs .*lr 1e-09"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=3, lr=1e-9, out=tmp_path / "r", **FAST)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run that learns says nothing
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=3, lr=0.01, out=tmp_path / "s", **FAST)


def test_unset_learning_rates_follow_the_modality_and_strategy():
    from headstart.run.settings import with_rates

    text, image, lora = (5e-5, 1e-3), (1e-3, None), (1e-3, None)
    s, line = with_rates(TrainSettings(), text)
    assert (s.lr, s.head_lr) == (5e-5, 1e-3) and "defaults" in line
    s, _ = with_rates(TrainSettings(lr=1e-4), text)  # a named lr is the head's too, as before
    assert (s.lr, s.head_lr) == (1e-4, None)
    s, _ = with_rates(TrainSettings(), image)
    assert (s.lr, s.head_lr) == (1e-3, None)
    assert get_strategy("lora").default_rates("text") == lora
    assert get_strategy("full").default_rates("text") == text


def test_unset_schedules_follow_the_modality_and_named_keys_win():
    from headstart.run.settings import with_schedule

    image, line = with_schedule(TrainSettings(), "image", 1000, "full")
    assert (image.epochs, image.batch_size, image.scheduler, image.warmup_epochs) == (5, 32, "cosine", 0.0)
    # Text fine-tuning: the BERT recipe, about 200 steps at batch 16 (1,600 texts: 100 steps, 2 epochs), linear
    # decay after a warm-up of 10% of the run.
    text, line = with_schedule(TrainSettings(), "text", 1600, "full")
    assert (text.epochs, text.batch_size, text.scheduler, text.warmup_epochs) == (2, 16, "linear", 0.2)
    assert "linear schedule" in line and "10% warm-up" in line
    assert with_schedule(TrainSettings(epochs=4), "text", 1600, "full")[0].warmup_epochs == pytest.approx(0.4)
    probe, _ = with_schedule(TrainSettings(), "text", 1600, "linear-probe")  # a head on cached features
    assert (probe.scheduler, probe.warmup_epochs) == ("cosine", 0.0)
    named, line = with_schedule(TrainSettings(epochs=3, batch_size=8, scheduler="cosine", warmup_epochs=0.0),
                                "text", 1600, "full")
    assert (named.scheduler, named.warmup_epochs) == ("cosine", 0.0) and "as set" in line


def test_linear_schedule_warms_up_then_decays_to_zero():
    from headstart.run.optim import warmup_cosine

    factor = warmup_cosine(100, 10, "linear")
    assert factor(0) < factor(5) < factor(9) < 1.0 and factor(10) == 1.0
    assert factor(55) == pytest.approx(0.5) and factor(100) == 0.0
    assert all(factor(i) >= factor(i + 1) for i in range(10, 100))
