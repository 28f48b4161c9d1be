"""Use a saved run: predict on a folder of images and evaluate on labelled data.

    python examples/predict_evaluate.py runs/pets --images photos/ --labelled pets-test/
    python examples/predict_evaluate.py RUN --small       # predicts on and evaluates with Fashion-MNIST test images

RUN is a run folder or its best/ bundle from any image fit (examples/image_folder.py writes one).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import headstart as hs


def write_test_images(root: Path, per_class: int) -> Path:
    """A few Fashion-MNIST test images as root/<class>/*.png: a labelled folder to predict on and evaluate."""
    from PIL import Image

    data = hs.datasets.load("fashion-mnist", subset=per_class).test
    for i, (image, label) in enumerate(zip(data.images, data.targets.tolist())):
        folder = root / data.classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i:05d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder or bundle")
    parser.add_argument("--images", type=Path, help="image files to predict on (a folder)")
    parser.add_argument("--labelled", type=Path, help="labelled image folder (one sub-folder per class)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV of the predictions")
    parser.add_argument("--small", action="store_true", help="use 5 Fashion-MNIST test images per class")
    args = parser.parse_args()
    if args.small:
        args.images = args.labelled = write_test_images(Path(args.out).with_suffix("") / "images", per_class=5)
    if args.images is None:
        parser.error("give --images FOLDER (and --labelled FOLDER to evaluate), or --small")

    clf = hs.load(args.run)                      # weights, labels and preprocessing from the bundle
    paths, preds = clf.predict_files(args.images)   # unreadable files are skipped with a warning
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "probability"])
        writer.writerows((p, label, f"{prob:.4f}") for p, (label, prob) in zip(paths, preds))
    print(f"wrote {len(paths)} predictions to {args.out}")
    if args.labelled is not None:
        # The folder's class names must be the model's (same names; '/' is not allowed in a folder name).
        labelled = hs.data.image_folder(args.labelled, val_fraction=0)
        print(hs.evaluate(args.run, labelled, split="train"))   # a folder loaded whole lands in 'train'


if __name__ == "__main__":
    sys.exit(main())
