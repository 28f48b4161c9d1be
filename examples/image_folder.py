"""Fine-tune a pretrained EfficientNet-Lite0 on a folder of images, one sub-folder per class.

    python examples/image_folder.py --data pets/ --out runs/pets          # your folder
    python examples/image_folder.py --small --out runs/example-images      # about a minute on a CPU

--small first writes a small folder of Fashion-MNIST images (20 per class) next to the run, then trains on
it at 64 px: the same code path as a folder of your own photos.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import headstart as hs


def write_fashion_folder(root: Path, per_class: int) -> Path:
    """Fashion-MNIST as PNG files under root/<class>/ (class names made file-system safe)."""
    from PIL import Image

    data = hs.datasets.load("fashion-mnist", subset=per_class)
    for i, (image, label) in enumerate(zip(data.train.images, data.train.targets.tolist())):
        folder = root / data.classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i:05d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="image folder: one sub-folder per class")
    parser.add_argument("--out", default="runs/example-images", help="run folder (must not exist yet)")
    parser.add_argument("--small", action="store_true", help="build a small Fashion-MNIST folder and train briefly")
    args = parser.parse_args()
    if args.data is None and not args.small:
        parser.error("give --data FOLDER, or --small to try it on a small Fashion-MNIST folder")
    folder = args.data or write_fashion_folder(Path(args.out + "-data"), per_class=20)

    data = hs.data.image_folder(folder)           # 10% of each class held out for validation
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0",
                            image_size=64 if args.small else None)
    # The last two layer groups adapt, the rest stays frozen (its activations are cached).
    run = hs.fit(model, data, "partial", trainable="last:2", epochs=3 if args.small else 8, out=args.out)
    print("best epoch", run.best_epoch, run.best_metrics)
    print("run folder:", run.run_dir, "- predict with: headstart predict", run.run_dir, "photos/")


if __name__ == "__main__":
    main()
