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
    from .run.from_config import data_from_config, model_from_config
    from .run.trainer import fit

    start = time.perf_counter()
    run_dir = free_folder(out)
    cfg = validate_config({**DEMO, "data": {**DEMO["data"], "subset": subset},
                           "train": {**DEMO["train"], "epochs": epochs}, "out": str(run_dir)})
    print(f"headstart demo: {cfg.model.backbone} with ImageNet weights ({cfg.model.weights}), strategy "
          f"{cfg.strategy.name}, on Fashion-MNIST ({subset} training images per class), {epochs} epochs")
    model = model_from_config(cfg)
    data = data_from_config(cfg, model)
    result = fit(model, data, cfg.strategy.name, out=cfg.out, bn=cfg.strategy.bn, augment=cfg.data.augment,
                 record=cfg, **cfg.train.model_dump())
    samples = save_samples(data.test.images.numpy(), run_dir / "samples")
    minutes = (time.perf_counter() - start) / 60
    acc = result.test_metrics["test/accuracy"]
    print(f"\ntest accuracy {acc:.4f} on {len(data.test)} Fashion-MNIST test images "
          f"(best epoch {result.best_epoch}, {minutes:.1f} min)")
    print(f"run folder: {run_dir}")
    print(f"predict with it: headstart predict {run_dir} {samples} --out {run_dir}/predictions.csv")
    return {"test_accuracy": acc, "minutes": minutes, "run_dir": str(run_dir)}
