"""Let headstart choose the fine-tuning strategy, its epochs and learning rates within a time budget.

    python examples/auto_budget.py --budget 10m --out runs/auto            # 100 Fashion-MNIST images per class
    python examples/auto_budget.py --small --out runs/example-auto          # about a minute on a CPU

auto measures the data, the model and a linear probe of the frozen features, then decides; it prints why
and writes the decision to <run>/auto.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import headstart as hs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m", help="time budget: 90s, 10m, 1.5h")
    parser.add_argument("--per-class", type=int, default=100, help="Fashion-MNIST training images per class")
    parser.add_argument("--out", default="runs/example-auto", help="run folder (must not exist yet)")
    parser.add_argument("--small", action="store_true", help="10 images per class at 64 px, a 20 s budget")
    args = parser.parse_args()
    per_class, budget = (10, "20s") if args.small else (args.per_class, args.budget)

    data = hs.datasets.load("fashion-mnist", subset=per_class)
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0",
                            image_size=64 if args.small else None)
    run = hs.fit(model, data, "auto", budget=budget, out=args.out)
    decision = json.loads((Path(args.out) / "auto.json").read_text())
    print("auto chose", decision.get("strategy"), "- test metrics:", run.test_metrics)


if __name__ == "__main__":
    main()
