"""Time to accuracy: headstart `auto` against a full fine-tune by HF Trainer and by Lightning, side by side.

    python bench/time_to_accuracy.py                        # both tasks (about 20 min on 2 idle cores)
    python bench/time_to_accuracy.py --tasks fmnist         # one task; the other keeps its earlier rows
    python bench/time_to_accuracy.py --quick                # 10 per class, 32 px, 1 epoch: a smoke test (~3 min)

Run it on an idle machine, with the allocator setting from the Makefile (GLIBC_TUNABLES). Results:
bench/results/time_to_accuracy.{json,md} (``_quick`` in quick mode).

The question (issue 15, "Must show"): does `headstart fit --strategy auto --budget B` reach the test accuracy
of a full fine-tune by the usual peer trainers in at most a third of their wall time?

Per task, the data are drawn once (seed 0) and every contender sees the same train / val / test images:
  fmnist         Fashion-MNIST, 100 training images per class (1,000), val 12 per class from the official
                 training set (disjoint from train), test 100 per class from the official test set.
  opencv-digits  OpenCV's 20x20 handwritten digits, 100 training images per class (1,000), val 12 per class,
                 test 100 per class from its seeded 20% test split.
The model is EfficientNet-Lite0 with its ImageNet weights (package:efficientnet-lite0) at one image size for
everyone (128 px; --size).

Contenders, each in its own fresh process, in this order:
  hf-trainer     HF Trainer, full fine-tune: AdamW, its default linear decay schedule (no warm-up), lr =
                 headstart's default for a CNN fine-tuned whole, batch 32, headstart's default epochs
                 (train.epochs), an evaluation on val each epoch, the last epoch's model, then the test set.
  lightning      Lightning, full fine-tune: the same optimizer, rate, batch and epochs, a cosine schedule
                 stepped every batch (the scheduler its docs show for this), val each epoch, trainer.test.
                 A plain LightningModule: speed.py's BackboneFinetuning callback would train the backbone at
                 a tenth of the rate, which is another recipe.
  headstart auto `headstart fit --strategy auto --budget B` through the CLI, B = a third of the faster peer's
                 wall time (so the peers run first).
  headstart full `headstart fit --strategy full` at its defaults (for reference).
The peers run at headstart's automatic precision and memory format (speed.py's ft_settings) on tensors that
their worker prepares from the same uint8 images with headstart's eval transform (no augmentation, as their
usual recipe on a tensor data set); headstart reads the same images from PNG folders this script writes.
Every wall time is measured by this script around the contender's process, from its start to its exit with
the test accuracy known (interpreter start, imports, data preparation and model loading included, for all
alike). One untimed warm-up process first loads the libraries into the page cache. headstart's feature cache
and image store point into a fresh folder per run, so no run reuses another's work.

The check per task: auto's test accuracy >= each peer's, and auto's wall time <= a third of each peer's. A
test accuracy on n images has a binomial standard error of about sqrt(p(1-p)/n) (about 0.01 at n=1,000), so
single-run differences under that are noise; the table gives it.

--quick: 10 training images per class, 32 px, 1 epoch for the peers and for headstart full; auto's budget is
at least 45 s there (a third of a toy peer run is less than auto's loading and measuring).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, peak_rss_mb, run_worker, save  # noqa: E402
from speed import LITE0, _Wrapped, ft_settings, make_model  # noqa: E402  (the peers' model and settings)

TASKS = {"fmnist": "fashion-mnist", "opencv-digits": "opencv-digits",
         "fmnist-corrupted": "fashion-mnist-corrupted"}  # short name -> hs.datasets name
DEFAULT_TASKS = "fmnist,opencv-digits"
PEERS = ("hf-trainer", "lightning")
HEADSTART = ("headstart-auto", "headstart-full")
BATCH = 32
QUICK_MIN_BUDGET = 45.0  # seconds; quick mode only (see run_task)


def default_epochs() -> int:
    """headstart's default number of epochs for fine-tuning an image backbone whole, which the peers copy."""
    from headstart.run.settings import schedule_defaults

    return schedule_defaults("image", 1000, "full")[0]["epochs"]


def default_full_lr() -> float:
    """headstart's default learning rate for an image backbone fine-tuned whole."""
    from headstart.strategies.base import get_strategy

    return get_strategy("full").default_rates("image")[0]


# ------------------------------------------------------------------------------------------------ the data

def write_folder(part, classes: list[str], root: Path) -> None:
    """One PNG per image under root/<class>/ (class names made safe for a path: Fashion-MNIST has a '/')."""
    from PIL import Image

    for c in classes:
        (root / c.replace("/", "-")).mkdir(parents=True, exist_ok=True)
    for i in range(len(part)):
        img = part.images[i]  # uint8 (C, H, W), C = 1 or 3
        arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(root / classes[int(part.targets[i])].replace("/", "-") / f"{i:05d}.png")


def prepare(dataset: str, per_class: int, folder: Path) -> dict:
    """Draw the task's splits once and write them for both kinds of contender: PNG folders (headstart's
    CLI) and a tensor file (the peers' workers). Returns the split sizes."""
    import headstart as hs

    data = hs.datasets.load(dataset, subset=per_class, seed=0)
    for name in ("train", "val", "test"):
        write_folder(getattr(data, name), data.classes, folder / name)
    torch.save({name: (getattr(data, name).images.clone(), getattr(data, name).targets.clone())
                for name in ("train", "val", "test")}, folder / "data.pt")
    return {"train": len(data.train), "val": len(data.val), "test": len(data.test), "classes": len(data.classes)}


def peer_tensors(folder: str, size: int, spec, fmt) -> dict:
    """The prepared splits as float tensors through headstart's eval transform at `size` px."""
    from headstart.data import BatchTransform

    tf = BatchTransform(spec.preprocessing.with_size(size), train=False)
    out = {}
    for name, (images, targets) in torch.load(Path(folder) / "data.pt").items():
        x = torch.cat([tf(images[i:i + 256]) for i in range(0, len(images), 256)])
        out[name] = (x.contiguous(memory_format=fmt), targets)
    return out


# ------------------------------------------------------------------------------------------- peer workers

def peer_model(args):
    """Lite0 with ImageNet weights at headstart's automatic (bf16, channels_last), and the split tensors."""
    torch.manual_seed(0)
    model = make_model(LITE0[0], args.classes)
    bf16, cl = ft_settings(model)
    fmt = torch.channels_last if cl else torch.contiguous_format
    if cl:
        model.to(memory_format=fmt)
    return model, bf16, cl, fmt, peer_tensors(args.folder, args.size, model.spec, fmt)


def peer_hf(args) -> dict:
    """HF Trainer's usual full fine-tune (linear decay, eval each epoch, last epoch's model), then the test set."""
    from transformers import Trainer, TrainingArguments

    model, bf16, cl, fmt, data = peer_model(args)
    rows = {name: [{"pixel_values": x[i], "labels": y[i]} for i in range(len(x))] for name, (x, y) in data.items()}

    def collate(batch):
        # stacking drops channels_last: restore it, as speed.py's peers do
        return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]).contiguous(memory_format=fmt),
                "labels": torch.stack([b["labels"] for b in batch])}

    def accuracy(pred) -> dict:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"accuracy": float((logits.argmax(-1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, num_train_epochs=args.epochs, per_device_train_batch_size=BATCH,
                                  per_device_eval_batch_size=128, learning_rate=args.lr, weight_decay=0.01,
                                  lr_scheduler_type="linear", bf16=bf16, use_cpu=True, seed=0,
                                  eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
                                  report_to=[], dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=_Wrapped(model), args=targs, train_dataset=rows["train"], eval_dataset=rows["val"],
                          data_collator=collate, compute_metrics=accuracy)
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        test = trainer.predict(rows["test"])
    val = [r["eval_accuracy"] for r in trainer.state.log_history if "eval_accuracy" in r]
    return {"accuracy": test.metrics["test_accuracy"], "val_accuracy": val, "train_s": train_s,
            "bf16": bf16, "channels_last": cl}


def peer_lightning(args) -> dict:
    """Lightning's usual full fine-tune (AdamW, cosine per step, val each epoch), then trainer.test."""
    import lightning as L

    model, bf16, cl, fmt, data = peer_model(args)
    L.seed_everything(0, verbose=False)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.correct = self.seen = 0

        def forward(self, x):
            return self.model(x.contiguous(memory_format=fmt))  # the default collate drops channels_last

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self(x).float(), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean(), batch_size=len(y))

        def test_step(self, batch, _):
            x, y = batch  # counted here rather than logged, so the figure is exact over uneven batches
            self.correct += int((self(x).argmax(1) == y).sum())
            self.seen += len(y)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=args.lr, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.estimated_stepping_batches)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def loader(name: str, shuffle: bool):
        x, y = data[name]
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH if shuffle else 128,
                                           shuffle=shuffle, generator=torch.Generator().manual_seed(0))

    module, val_acc = Module(), []

    class KeepVal(L.Callback):  # the val accuracy of every epoch, for the record
        def on_validation_epoch_end(self, trainer, _):
            if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
                val_acc.append(float(trainer.callback_metrics["val_acc"]))

    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed" if bf16 else "32-true",
                        max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[KeepVal()])
    start = time.perf_counter()
    trainer.fit(module, loader("train", True), loader("val", False))
    train_s = time.perf_counter() - start
    trainer.test(module, loader("test", False), verbose=False)
    return {"accuracy": module.correct / module.seen, "val_accuracy": val_acc, "train_s": train_s,
            "bf16": bf16, "channels_last": cl}


def warmup(args) -> dict:
    """Untimed: import what the contenders import and build the model once, so the page cache is warm."""
    import headstart  # noqa: F401
    import lightning  # noqa: F401
    import transformers  # noqa: F401

    make_model(LITE0[0], 10)
    return {}


WORKERS = {"hf-trainer": peer_hf, "lightning": peer_lightning, "warmup": warmup}


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name", choices=sorted(WORKERS))
    p.add_argument("--folder", default="")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--classes", type=int, default=10)
    args = p.parse_args(argv)
    result = WORKERS[args.name](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------ the contenders

def run_peer(here: str, name: str, folder: Path, size: int, epochs: int, lr: float, classes: int) -> dict:
    """One peer in a fresh process; wall time from its start to its exit, the test accuracy known."""
    start = time.perf_counter()
    row = run_worker(here, [name, "--folder", str(folder), "--size", str(size), "--epochs", str(epochs),
                            "--lr", str(lr), "--classes", str(classes)])
    row["wall_s"] = time.perf_counter() - start
    return row


def run_headstart(folder: Path, size: int, strategy: str, budget_s: float | None, epochs: int | None) -> dict:
    """`headstart fit` through the CLI on the PNG folders; wall time around the command."""
    exe = str(Path(sys.executable).with_name("headstart"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [exe, "fit", "--data", str(folder / "train"), "--set", f"data.val_path={folder / 'val'}",
               "--set", f"data.test_path={folder / 'test'}", "--set", f"model.image_size={size}",
               "--backbone", LITE0[0], "--weights", LITE0[1], "--strategy", strategy, "--out", str(out)]
        if budget_s is not None:
            cmd += ["--budget", f"{budget_s:.1f}s"]
        if epochs is not None:
            cmd += ["--epochs", str(epochs)]
        # A fresh feature cache and image store: nothing left by an earlier run may speed this one up.
        env = {**os.environ, "HEADSTART_CACHE": f"{tmp}/cache", "HEADSTART_STORE_DIR": f"{tmp}/stores"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        row = {"wall_s": wall, "command": " ".join(cmd[1:]).replace(tmp, "TMP"),
               "accuracy": json.loads((out / "test_metrics.json").read_text())["test/accuracy"]}
        decision = out / "auto.json"
        if decision.is_file():
            d = json.loads(decision.read_text())
            row["auto"] = {"strategy": d["strategy"], "options": d["options"], "train": d["train"],
                           "reasons": d["reasons"], "estimates_s": d["estimates_s"],
                           "contender": d.get("contender")}
    return row


def run_task(here: str, task: str, args, epochs: int, lr: float) -> dict:
    """The four contenders on one task: peers first (auto's budget is a third of the faster one)."""
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sizes = prepare(TASKS[task], args.per_class, folder)
        for name in PEERS:
            try:
                rows[name] = run_peer(here, name, folder, args.size, epochs, lr, sizes["classes"])
            except Exception as e:  # a failed peer must not lose the other results
                rows[name] = {"error": str(e)[-800:]}
            print(task, name, rows[name], flush=True)
        walls = [rows[p]["wall_s"] for p in PEERS if "wall_s" in rows[p]]
        budget = min(walls) / 3 if walls else None
        if budget is not None and args.quick:
            # At toy sizes a third of a peer is a few seconds, less than starting the CLI: the smoke test
            # would only exercise auto's refusal. Quick mode therefore gives auto at least QUICK_MIN_BUDGET.
            budget = max(budget, QUICK_MIN_BUDGET)
        for name in HEADSTART:
            try:
                if name == "headstart-auto":
                    if budget is None:
                        raise RuntimeError("no peer finished, so there is no budget")
                    rows[name] = run_headstart(folder, args.size, "auto", budget, None)
                else:  # defaults, except the quick run's single epoch
                    rows[name] = run_headstart(folder, args.size, "full", None, epochs if args.quick else None)
            except Exception as e:
                rows[name] = {"error": str(e)[-800:]}
            print(task, name, rows[name], flush=True)
    return {"dataset": TASKS[task], "quick": args.quick, "sizes": sizes, "image_size": args.size, "epochs": epochs,
            "lr": lr, "budget_s": budget, "rows": rows, "check": check(rows)}


def check(rows: dict) -> dict:
    """auto's accuracy >= each peer's and its wall <= a third of each peer's (None where a row failed)."""
    auto = rows.get("headstart-auto", {})
    out = {}
    for peer in PEERS:
        p = rows.get(peer, {})
        if "accuracy" not in auto or "accuracy" not in p:
            out[peer] = None
            continue
        out[peer] = {"accuracy_ok": auto["accuracy"] >= p["accuracy"], "time_ok": auto["wall_s"] <= p["wall_s"] / 3,
                     "accuracy_gap": auto["accuracy"] - p["accuracy"], "wall_ratio": auto["wall_s"] / p["wall_s"]}
    return out


# ------------------------------------------------------------------------------------------------ the table

def task_markdown(task: str, r: dict) -> list[str]:
    """One task's table and its check."""
    s = r["sizes"]
    lines = [f"## {task} ({r['dataset']}): {s['train']} train / {s['val']} val / {s['test']} test images, "
             f"{r['image_size']} px", "",
             f"Peers: epochs {r['epochs']}, lr {r['lr']:g}, batch {BATCH}. auto's budget: "
             + (f"{r['budget_s']:.1f} s (a third of the faster peer"
                + (f", at least {QUICK_MIN_BUDGET:.0f} s in quick mode)." if r.get("quick") else ").")
                if r["budget_s"] else "none (no peer ran)."),
             "", "| contender | test accuracy | wall s | wall / faster peer | notes |", "|---|---:|---:|---:|---|"]
    peer_walls = [r["rows"][p]["wall_s"] for p in PEERS if "wall_s" in r["rows"].get(p, {})]
    fastest = min(peer_walls) if peer_walls else None
    for name, row in r["rows"].items():
        if "error" in row:
            lines.append(f"| {name} | failed | | | {row['error'].splitlines()[-1][:100]} |")
            continue
        rel = f"{row['wall_s'] / fastest:.2f}x" if fastest else ""
        if "auto" in row:
            a = row["auto"]
            note = f"chose {a['strategy']} {a['options'] or ''} {a['train']}".replace("|", "/")
            if (a.get("contender") or {}).get("shipped"):
                note += f"; shipped its raw-input contender ({a['contender']['model']})"
        elif name in PEERS:
            note = f"val accuracy by epoch {', '.join(f'{v:.3f}' for v in row['val_accuracy'])}; peak RSS " \
                   f"{row['peak_rss_mb']:.0f} MB"
        else:
            note = ""
        lines.append(f"| {name} | {row['accuracy']:.4f} | {row['wall_s']:.1f} | {rel} | {note} |")
    accs = [row["accuracy"] for row in r["rows"].values() if "accuracy" in row]
    if accs:
        p = sum(accs) / len(accs)
        lines += ["", f"Binomial standard error of a test accuracy near {p:.3f} on {s['test']} images: "
                  f"{math.sqrt(p * (1 - p) / s['test']):.4f}."]
    lines += ["", "Check: headstart auto's test accuracy >= the peer's, and its wall time <= 1/3 of the peer's.", "",
              "| peer | accuracy (auto - peer) | wall (auto / peer) | passes |", "|---|---:|---:|---|"]
    for peer, c in r["check"].items():
        if c is None:
            lines.append(f"| {peer} | n/a | n/a | no result |")
            continue
        verdict = "yes" if c["accuracy_ok"] and c["time_ok"] else \
            "no: " + ", ".join(w for w, ok in (("accuracy", c["accuracy_ok"]), ("time", c["time_ok"])) if not ok)
        lines.append(f"| {peer} | {c['accuracy_gap']:+.4f} | {c['wall_ratio']:.2f} | {verdict} |")
    return lines + [""]


def markdown(record: dict) -> str:
    """The results file's table: every task's table and check."""
    lines = [f"# Time to accuracy: headstart auto against HF Trainer and Lightning ({record['mode']} mode)", "",
             "EfficientNet-Lite0 (ImageNet weights), each contender in a fresh process, wall time around the "
             "process (start to test accuracy known). See the script's docstring for the recipes.", ""]
    for task, r in record["tasks"].items():
        lines += [f"Recorded {r.get('date', '?')}.", ""] + task_markdown(task, r)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 per class, 32 px, 1 epoch: a smoke test")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, of {', '.join(TASKS)} "
                   f"(default {DEFAULT_TASKS}); tasks not rerun keep their earlier rows")
    p.add_argument("--size", type=int, default=None, help="image size for every contender (default 128; quick 32)")
    args = p.parse_args()
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    args.per_class = 10 if args.quick else 100
    args.size = args.size or (32 if args.quick else 128)
    epochs, lr = (1 if args.quick else default_epochs()), default_full_lr()
    here = str(Path(__file__).resolve())
    name = "time_to_accuracy" + ("_quick" if args.quick else "")
    previous = RESULTS / f"{name}.json"
    record: dict = {"machine": machine(), "mode": "quick" if args.quick else "full", "tasks": {}}
    if previous.exists():  # tasks not rerun keep their earlier results
        record["tasks"] = {t: v for t, v in json.loads(previous.read_text()).get("tasks", {}).items()
                           if t not in tasks}
    run_worker(here, ["warmup"])
    for task in tasks:
        record["tasks"][task] = run_task(here, task, args, epochs, lr)
        record["tasks"][task]["date"] = time.strftime("%Y-%m-%d %H:%M")
    save(name, record, markdown(record))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    else:
        main()
