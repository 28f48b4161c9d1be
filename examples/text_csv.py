"""Classify the texts of a CSV file with MiniLM (offline weights), fine-tuned whole.

    python examples/text_csv.py --csv news.csv --text-column body --label-column topic --out runs/news
    python examples/text_csv.py --small --out runs/example-text       # about a minute on a CPU

--small first writes a CSV of 20 BBC News articles per topic (columns `text`, `topic`) next to the run.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import headstart as hs


def write_news_csv(path: Path, per_class: int) -> Path:
    """BBC News articles as a CSV with a text and a topic column."""
    news = hs.datasets.load("bbc-news", subset=per_class)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "topic"])
        for text, label in zip(news.train.texts, news.train.targets.tolist()):
            writer.writerow([text, news.classes[label]])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="CSV, TSV, JSONL, JSON or Parquet file")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="topic")
    parser.add_argument("--out", default="runs/example-text", help="run folder (must not exist yet)")
    parser.add_argument("--small", action="store_true", help="write a small BBC News CSV and train briefly")
    args = parser.parse_args()
    if args.csv is None and not args.small:
        parser.error("give --csv FILE, or --small to try it on a small BBC News CSV")
    path = args.csv or write_news_csv(Path(args.out + "-data") / "news.csv", per_class=20)

    data = hs.data.text_file(path, text_column=args.text_column, label_column=args.label_column)
    model = hs.create_model("hf:sentence-transformers/all-MiniLM-L6-v2", weights="package:all-minilm-l6-v2",
                            max_length=64 if args.small else 256)
    # Learning rates left unset: 5e-5 for the encoder, 1e-3 for the new head (the text defaults of `full`).
    run = hs.fit(model, data, "full", epochs=2, out=args.out)
    print("best epoch", run.best_epoch, run.best_metrics)
    print(hs.load(args.out).predict(["Shares fell after the bank cut its profit forecast.",
                                     "The striker scored twice in the second half."]))


if __name__ == "__main__":
    main()
