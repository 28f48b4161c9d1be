"""One backbone, two heads: the ten Fashion-MNIST items and four kinds of article (tops, bottoms, footwear,
bags), trained together.

    python examples/multitask.py --out runs/items-kinds                    # 200 images per class
    python examples/multitask.py --small --out runs/example-multitask      # about a minute on a CPU
"""
from __future__ import annotations

import argparse

import headstart as hs
from headstart.data.datasets import FASHION_MNIST_KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weighting", default="equal", help="equal, uncertainty, dwa, pcgrad")
    parser.add_argument("--out", default="runs/example-multitask", help="run folder (must not exist yet)")
    parser.add_argument("--small", action="store_true", help="20 images per class, 2 epochs")
    args = parser.parse_args()

    items = hs.datasets.load("fashion-mnist", subset=20 if args.small else 200)
    data = hs.data.derive_tasks(items, "item", kind=FASHION_MNIST_KINDS)   # the second task: a grouping
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0", image_size=64)
    run = hs.fit(model, data, "full", epochs=2 if args.small else 3, lr=1e-3, weighting=args.weighting,
                 out=args.out)
    print("test:", run.test_metrics)                       # test/item/accuracy, test/kind/accuracy, ...
    print(hs.load(args.out).predict(items.test.images[:3]))   # {"item": [...], "kind": [...]}


if __name__ == "__main__":
    main()
