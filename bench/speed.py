"""Speed benchmarks: headstart against the textbook PyTorch loop and peer trainers, side by side in one run.

    python bench/speed.py            # full mode (~30 min on 2 cores)
    python bench/speed.py --quick    # a few minutes: same contenders, smaller sizes

Every contender runs in its own fresh process (own allocator state and peak RSS) on the same model, data,
batch size, precision and epochs. Results: bench/results/speed.json and speed.md.

a. Linear probe, EfficientNet-Lite0 (ImageNet weights) on Fashion-MNIST: the textbook loop as taught
   (backbone frozen with requires_grad=False but left in train mode, so BatchNorm statistics drift; fp32;
   frozen features recomputed every epoch), the corrected textbook loop (backbone in eval mode), headstart.
b. Full fine-tuning throughput: textbook fp32 loop, headstart (auto precision and memory format), HF Trainer
   and Lightning (BackboneFinetuning) at headstart's settings.
c. Achieved FLOP/s of a headstart training step against the bf16/fp32 peaks measured in the same run.
d. Peak RSS of every contender.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, fmnist_tensors, machine, peak_rss_mb, run_worker, save  # noqa: E402

LITE0 = ("timm:tf_efficientnet_lite0", "package:efficientnet-lite0")


def make_model(name: str, num_classes: int = 10):
    import headstart as hs

    weights = LITE0[1] if name == LITE0[0] else None
    return hs.create_model(name, num_classes, weights=weights)


# --------------------------------------------------------------------------------------------- (a) linear probe

def lp_textbook(args) -> dict:
    """The loop most tutorials teach: freeze with requires_grad=False, recompute the backbone every epoch."""
    torch.manual_seed(0)
    model = make_model(LITE0[0])
    data, xtr, ytr, xte, yte = fmnist_tensors(args.per_class, args.test_per_class, 224, model.spec)
    for p in model.backbone.parameters():
        p.requires_grad = False
    opt = torch.optim.AdamW(model.head.parameters(), lr=args.lr, weight_decay=0.01)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()  # as taught: the whole model, BatchNorm of the frozen backbone included
        if args.variant == "corrected":
            model.backbone.eval()
        g = torch.Generator().manual_seed(epoch)
        for idx in torch.randperm(len(xtr), generator=g).split(args.batch):
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xte[i:i + 128]).argmax(1) for i in range(0, len(xte), 128)])
    wall = time.perf_counter() - start
    return {"wall_s": wall, "accuracy": (pred == yte).float().mean().item()}


def lp_headstart(args) -> dict:
    import headstart as hs

    torch.manual_seed(0)
    data = hs.datasets.load("fashion-mnist", subset=args.per_class, test_subset=args.test_per_class)
    model = make_model(LITE0[0])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        # solver sgd: the epoch loop is what this compares with the textbook loop
        run = hs.fit(model, data, "linear-probe", epochs=args.epochs, lr=args.lr, batch_size=args.batch,
                     solver="sgd", scheduler="constant", augment=False, progress=False, out=f"{tmp}/run", cache_dir=f"{tmp}/cache")
        wall = time.perf_counter() - start
    return {"wall_s": wall, "accuracy": run.test_metrics["test/accuracy"]}


# ------------------------------------------------------------------------------------ (b) full fine-tuning speed

def ft_settings(model) -> tuple[bool, bool]:
    """headstart's automatic choices for this model on this machine: (bf16, channels_last)."""
    from headstart.runtime import resolve_channels_last, resolve_precision

    return (resolve_precision("auto", model, torch.device("cpu"), training=True),
            resolve_channels_last("auto", model))


def ft_data(args, model):
    n = args.batch * (args.steps + args.warmup)
    _, xtr, ytr, _, _ = fmnist_tensors(n // 10 + 1, 1, 224, model.spec)
    return xtr[:n], ytr[:n]


def ft_textbook(args) -> dict:
    """Plain fp32 loop, default memory format: what a tutorial writes."""
    torch.manual_seed(0)
    model = make_model(args.model)
    x, y = ft_data(args, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()
    batches = list(torch.arange(len(x)).split(args.batch))
    for i, idx in enumerate(batches):
        if i == args.warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"images_per_s": args.steps * args.batch / (time.perf_counter() - start), "bf16": False,
            "channels_last": False}


def ft_headstart(args) -> dict:
    """hs.fit end to end (per-epoch validation, checkpoint and best bundle included), after a warm-up fit."""
    import headstart as hs
    from headstart.data import DataSplits

    torch.manual_seed(0)
    model = make_model(args.model)
    bf16, cl = ft_settings(model)
    n = args.batch * args.steps
    data = hs.datasets.load("fashion-mnist", subset=n // 10 + 1, val_subset=2, test_subset=1)
    train = data.train.subset(torch.arange(n))
    with tempfile.TemporaryDirectory() as tmp:
        warm = DataSplits(train.subset(torch.arange(args.batch * args.warmup)), data.val, None, data.classes, "w")
        hs.fit(model, warm, "full", epochs=1, lr=1e-4, batch_size=args.batch, scheduler="constant", augment=False,
               progress=False, out=f"{tmp}/warm")
        start = time.perf_counter()
        run = hs.fit(model, DataSplits(train, data.val, None, data.classes, "t"), "full", epochs=1, lr=1e-4,
                     batch_size=args.batch, scheduler="constant", augment=False, progress=False, out=f"{tmp}/run")
        wall = time.perf_counter() - start
    # End to end (validation, checkpoint, best bundle, set-up included) and the training loop alone.
    return {"images_per_s": n / wall, "loop_images_per_s": n / run.history[0]["train_seconds"], "bf16": bf16,
            "channels_last": cl}


class _Wrapped(nn.Module):
    """HF Trainer wants a model that returns its loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, labels):
        logits = self.model(pixel_values)
        return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}


def peer_setup(args):
    """What every peer trainer starts from: the model at headstart's settings and the prepared tensors."""
    torch.manual_seed(0)
    model = make_model(args.model)
    bf16, cl = ft_settings(model)
    if cl:
        model.to(memory_format=torch.channels_last)
    x, y = ft_data(args, model)
    return model, bf16, cl, (torch.channels_last if cl else torch.contiguous_format), x, y


def ft_hf(args) -> dict:
    from transformers import Trainer, TrainingArguments

    model, bf16, cl, fmt, x, y = peer_setup(args)
    rows = [{"pixel_values": x[i], "labels": y[i]} for i in range(len(x))]

    def collate(batch):
        return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]).contiguous(memory_format=fmt),
                "labels": torch.stack([b["labels"] for b in batch])}

    def train(steps, out):
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch, max_steps=steps,
                                  learning_rate=1e-4, weight_decay=0.01, lr_scheduler_type="constant",
                                  bf16=bf16, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                  dataloader_num_workers=0, disable_tqdm=True)
        Trainer(model=_Wrapped(model), args=targs, train_dataset=rows, data_collator=collate).train()

    with tempfile.TemporaryDirectory() as tmp:
        train(args.warmup, tmp)
        start = time.perf_counter()
        train(args.steps, tmp)
        wall = time.perf_counter() - start
    return {"images_per_s": args.steps * args.batch / wall, "bf16": bf16, "channels_last": cl}


def ft_lightning(args) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import BackboneFinetuning

    model, bf16, cl, fmt, x, y = peer_setup(args)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = model.backbone, model.head  # BackboneFinetuning looks for .backbone

        def training_step(self, batch, _):
            xb, yb = batch
            return F.cross_entropy(self.head(self.backbone.forward_features(xb.contiguous(memory_format=fmt))).float(), yb)

        def configure_optimizers(self):
            return torch.optim.AdamW(filter(lambda p: p.requires_grad, self.parameters()), lr=1e-4, weight_decay=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch)
    module = Module()

    def train(steps):
        # Unfreeze at epoch 0: full fine-tuning from the first step, the backbone at lr/10 (the callback's way).
        trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed" if bf16 else "32-true",
                            max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=0)])
        trainer.fit(module, loader)

    train(args.warmup)
    start = time.perf_counter()
    train(args.steps)
    wall = time.perf_counter() - start
    return {"images_per_s": args.steps * args.batch / wall, "bf16": bf16, "channels_last": cl}


# ------------------------------------------------------------------------------- (d) partial FT on the prefix cache

def partial_ft(args) -> dict:
    """Partial fine-tuning of the last 2 layer groups, with the prefix cache on or off (same seed, same data)."""
    import headstart as hs

    torch.manual_seed(0)
    data = hs.datasets.load("fashion-mnist", subset=args.per_class, test_subset=args.test_per_class)
    model = make_model(LITE0[0])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = hs.fit(model, data, "partial", trainable=args.trainable, epochs=args.epochs, lr=args.lr, batch_size=args.batch,
                     augment=False, cache=args.variant, progress=False, out=f"{tmp}/run")
        wall = time.perf_counter() - start
    epochs = [row["train_seconds"] for row in run.history]
    return {"wall_s": wall, "epoch_s": epochs, "accuracy": run.test_metrics["test/accuracy"]}


# ------------------------------------------------------------------------------------------- (c) FLOP/s and peak

def peak(args) -> dict:
    """Best achieved GFLOP/s of large bf16 and fp32 matmuls and 1x1 convolutions (oneDNN) on this machine."""
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        x = torch.randn(32, 512, 28, 28).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(512, 512, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
        best = 0.0
        for fn, flops in ((lambda: a @ b, 2 * 2048 ** 3), (lambda: F.conv2d(x, w), 2 * 32 * 512 * 512 * 28 * 28)):
            fn()
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(5):
                    fn()
                best = max(best, 5 * flops / (time.perf_counter() - t) / 1e9)
        out[str(dtype).split(".")[-1]] = best
    return out


def step_flops(args) -> dict:
    """FLOPs of one headstart training step (forward + backward, counted), and its achieved GFLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    from headstart.runtime import autocast

    torch.manual_seed(0)
    model = make_model(args.model)
    bf16, cl = ft_settings(model)
    model.train()
    if cl:
        model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast(torch.device("cpu"), bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps
    flops = counter.get_total_flops()
    return {"gflop_per_step": flops / 1e9, "achieved_gflops": flops / per_step / 1e9, "bf16": bf16,
            "images_per_s": args.batch / per_step}


WORKERS = {"lp-taught": lp_textbook, "lp-corrected": lp_textbook, "lp-headstart": lp_headstart,
           "ft-textbook": ft_textbook, "ft-headstart": ft_headstart, "ft-hf": ft_hf, "ft-lightning": ft_lightning,
           "peak": peak, "flops": step_flops, "partial-on": partial_ft, "partial-off": partial_ft}


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name", choices=sorted(WORKERS))
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--model", default="timm:resnet50")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--trainable", default="last:2")
    args = p.parse_args(argv)
    args.variant = args.name.split("-", 1)[-1]
    result = WORKERS[args.name](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


FT_MODELS = ("timm:resnet50", LITE0[0])
FT_TRAINERS = ("ft-textbook", "ft-headstart", "ft-hf", "ft-lightning")


def ft_runs(here: str, model: str, ft: list[str], repeats: int) -> dict[str, dict]:
    """Each trainer `repeats` times, interleaved in rotating order (so none always runs first or last on a
    machine whose speed drifts); per trainer the mean images/s, each run's figure, and the largest peak RSS."""
    runs: dict[str, list[dict]] = {name: [] for name in FT_TRAINERS}
    for rep in range(repeats):
        k = rep % len(FT_TRAINERS)
        for name in FT_TRAINERS[k:] + FT_TRAINERS[:k]:
            try:
                runs[name].append(run_worker(here, [name, "--model", model, *ft]))
            except Exception as e:  # a missing peer must not lose the other results
                runs[name].append({"error": str(e)[-500:]})
            print(model, name, runs[name][-1], flush=True)
    out = {}
    for name, rows in runs.items():
        good = [r for r in rows if "error" not in r]
        if not good:
            out[name] = rows[-1]
            continue
        out[name] = {**good[0], "runs": [round(r["images_per_s"], 2) for r in good],
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in good)}
        for key in ("images_per_s", "loop_images_per_s"):
            if key in good[0]:
                out[name][key] = sum(r[key] for r in good) / len(good)
    return out


def ft_markdown(model: str, r: dict) -> list[str]:
    """Section b's table for one model."""
    lines = [f"## b. Full fine-tuning throughput, {model}, batch 32, 224 px", "",
             "| trainer | images/s (mean) | each run | bf16 | channels_last | peak RSS MB | vs textbook fp32 |",
             "|---|---|---|---|---|---|---|"]
    base = r["ft-textbook"].get("images_per_s")
    for name, row in r.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:80]} | | | | | |")
            continue
        each = ", ".join(f"{v:.1f}" for v in row.get("runs", [row["images_per_s"]]))
        lines.append(f"| {name} | {row['images_per_s']:.1f} | {each} | {row['bf16']} | {row['channels_last']} | "
                     f"{row['peak_rss_mb']:.0f} | {row['images_per_s'] / base:.2f}x |")
    hs_row = r.get("ft-headstart", {})
    if "loop_images_per_s" in hs_row:
        lines += ["", f"headstart's figure is `fit` end to end (set-up, one validation pass, checkpoint and "
                  f"best bundle written in the background); its training loop alone ran "
                  f"{hs_row['loop_images_per_s']:.1f} images/s. The textbook loop and the peers train on "
                  "tensors prepared before timing; headstart decodes and resizes each batch itself."]
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    p.add_argument("--only", default="a,b,c,d", help="sections to run: a (linear probe), b (fine-tune), c (FLOP/s), "
                                                    "d (partial fine-tuning with and without the prefix cache)")
    p.add_argument("--models", default=",".join(FT_MODELS), help="section b's models (the others keep their "
                   "earlier rows)")
    p.add_argument("--repeats", type=int, default=2, help="section b: runs per trainer, interleaved (default 2)")
    args = p.parse_args()
    here = str(Path(__file__).resolve())
    lp = ["--per-class", "20", "--test-per-class", "20", "--epochs", "3"] if args.quick else \
         ["--per-class", "100", "--test-per-class", "100", "--epochs", "10"]
    ft = ["--steps", "4", "--warmup", "2"] if args.quick else ["--steps", "20", "--warmup", "3"]
    record: dict = {"machine": machine(), "mode": "quick" if args.quick else "full", "lp": {}, "ft": {}, "flops": {}}
    lines: list[str] = []
    md: dict[str, str] = {}  # section -> its markdown, so a partial run (--only) keeps the other sections
    sections = set(args.only.split(","))
    result_name = "speed" + ("_quick" if args.quick else "")  # the loops below reuse `name`
    previous = RESULTS / f"{result_name}.json"  # sections (and section b's models) not rerun keep their earlier results
    if "a" in sections:
        for name in ("lp-taught", "lp-corrected", "lp-headstart"):
            record["lp"][name] = run_worker(here, [name, *lp])
            print(name, record["lp"][name], flush=True)
        r = record["lp"]
        lines += ["## a. Linear probe, EfficientNet-Lite0 (ImageNet) on Fashion-MNIST, 224 px",
                  f"{lp}", "", "| loop | wall s | test accuracy | peak RSS MB | speed-up vs corrected |",
                  "|---|---|---|---|---|"]
        for name, row in r.items():
            lines.append(f"| {name} | {row['wall_s']:.1f} | {row['accuracy']:.4f} | {row['peak_rss_mb']:.0f} | "
                         f"{r['lp-corrected']['wall_s'] / row['wall_s']:.1f}x |")
        lines.append("")
    if "a" in sections:
        md["a"], lines = "\n".join(lines), []
    if "b" in sections:
        previous_ft = json.loads(previous.read_text()).get("ft", {}) if previous.exists() else {}
        for model in FT_MODELS:
            if model not in args.models.split(","):
                if model in previous_ft:  # not rerun: keep its earlier rows
                    record["ft"][model] = previous_ft[model]
                continue
            record["ft"][model] = ft_runs(here, model, ft, args.repeats)
        for model, r in record["ft"].items():
            lines += ft_markdown(model, r)
    if "b" in sections:
        md["b"], lines = "\n".join(lines), []
    if "c" in sections:
        record["flops"]["peak"] = run_worker(here, ["peak"])
        steps = ["--steps", "3", "--warmup", "1"] if args.quick else ["--steps", "10", "--warmup", "2"]
        # ResNet-50 only: torch's FLOP counter ignores groups in the convolution backward, so it over-counts
        # depthwise convolutions (EfficientNet's) about C-fold; checked on a 64-channel depthwise 3x3 conv.
        for model in ("timm:resnet50",):
            record["flops"][model] = run_worker(here, ["flops", "--model", model, *steps])
        pk = record["flops"]["peak"]
        lines += ["## c. Achieved FLOP/s of a training step (batch 32, 224 px) against measured peaks", "",
                  f"Measured peaks: bf16 {pk['bfloat16']:.0f} GFLOP/s, fp32 {pk['float32']:.0f} GFLOP/s.", "",
                  "| model | precision | GFLOP/step | achieved GFLOP/s | % of peak in its precision |", "|---|---|---|---|---|"]
        for model in ("timm:resnet50",):
            row = record["flops"][model]
            ref = pk["bfloat16"] if row["bf16"] else pk["float32"]
            lines.append(f"| {model} | {'bf16' if row['bf16'] else 'fp32'} | {row['gflop_per_step']:.0f} | "
                         f"{row['achieved_gflops']:.0f} | {100 * row['achieved_gflops'] / ref:.0f}% |")
        lines.append("")
    if "c" in sections:
        md["c"], lines = "\n".join(lines), []
    if "d" in sections:
        pf = ["--per-class", "20", "--test-per-class", "20", "--epochs", "2"] if args.quick else \
             ["--per-class", "100", "--test-per-class", "100", "--epochs", "4"]
        r = record["partial"] = {}
        for trainable in ("last:2", "last:1"):
            for name in ("partial-off", "partial-on"):
                r[f"{trainable} {name}"] = run_worker(here, [name, *pf, "--lr", "3e-4", "--trainable", trainable])
        lines += ["## d. Partial fine-tuning on the prefix cache, EfficientNet-Lite0 on Fashion-MNIST, 224 px",
                  f"{pf}; no augmentation (the prefix cache holds the plain view). Per-epoch time of the later "
                  "epochs; the first epoch with the cache on also computes the cached activations. Lite0's last "
                  "two layer groups (blocks.5, blocks.6 + head conv) hold about 35% of its forward FLOPs, the "
                  "last one about 12%.", "",
                  "| trainable | prefix cache | first epoch s | later epochs s (mean) | fit wall s | test accuracy "
                  "| peak RSS MB |", "|---|---|---|---|---|---|---|"]
        for name, row in r.items():
            later = row["epoch_s"][1:] or row["epoch_s"]
            row["later_epoch_s"] = sum(later) / len(later)
            trainable, variant = name.split(" ")
            lines.append(f"| {trainable} | {variant.split('-')[1]} | {row['epoch_s'][0]:.1f} | "
                         f"{row['later_epoch_s']:.2f} | {row['wall_s']:.1f} | {row['accuracy']:.4f} | "
                         f"{row['peak_rss_mb']:.0f} |")
        lines.append("")
        for trainable in ("last:2", "last:1"):
            off, on = r[f"{trainable} partial-off"], r[f"{trainable} partial-on"]
            lines.append(f"Per-epoch speed-up from the prefix cache, {trainable}: "
                         f"{off['later_epoch_s'] / on['later_epoch_s']:.1f}x; whole fit: "
                         f"{off['wall_s'] / on['wall_s']:.1f}x.")
        lines.append("")
    if "d" in sections:
        md["d"] = "\n".join(lines)
    if previous.exists():  # keep the sections this run did not redo
        old = json.loads(previous.read_text())
        for key, section in (("lp", "a"), ("ft", "b"), ("flops", "c"), ("partial", "d")):
            if section not in sections and key in old:
                record[key] = old[key]
                md.setdefault(section, old.get("md", {}).get(section, ""))
    record["md"] = md
    header = f"# Speed benchmark ({record['mode']} mode; sections run on: see speed.json)\n\n"
    save(result_name, record, header + "\n".join(md[k] for k in "abcd" if md.get(k)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    else:
        main()
