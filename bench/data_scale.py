"""Data beyond memory (issue 21): an image folder decoded once into the on-disk store, and read from there.

    python bench/data_scale.py                  # 100,000 photos: run it alone (about 10 minutes on 2 cores, 6 GB of disk)
    python bench/data_scale.py --n 2000 --quick # smoke test (a few minutes)

It generates N synthetic photos (320x240 JPEG, 5 classes told apart by colour and shape) in --dir and measures,
each step in a fresh process (own peak RSS):
1. first-use decode rate into the store (images/s, `store="disk"`, its process pool) against a plain PIL loop
   over the same files with the same number of processes (open, convert to RGB, resize; once without and
   once with JPEG draft mode, as the store uses);
2. a second process opening the folder decodes nothing, then fits a linear probe on all of it
   (EfficientNet-Lite0, ImageNet weights, 64 px input: images stored at 74 px; 1 epoch, features cached):
   its peak RSS;
3. on a subset of --subset images (default 20,000) held both in memory and in the store, side by side in one
   process: loader only (uint8 rows to the augmented float batch), full fine-tuning steps (batch 32) and
   feature extraction (batch 128), alternating store / memory blocks so that both see the same machine state;
4. two processes (DDP ranks 0 and 1, `iterate_batches` sharding) opening the store at once and reading
   disjoint halves: images decoded (0 expected) and rows read by both.
The store's file is in the page cache after the build on a machine with the memory for it (stated in the
results: the file size and the machine's memory). Results: bench/results/data_scale{_quick}.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, run_worker, save  # noqa: E402

CLASSES = ["circle", "square", "stripes", "ring", "cross"]
IMAGE_SIZE = 64  # the model's input; the store keeps ceil(64 / 0.875) = 74 px
WEIGHTS = ("timm:tf_efficientnet_lite0", "package:efficientnet-lite0")


# ----------------------------------------------------------------------------------------------------------
# The folder


def _write_photos(args: tuple) -> int:
    import numpy as np
    from PIL import Image, ImageDraw

    root, start, count, seed = args
    rng = np.random.default_rng(seed + start)
    for i in range(start, start + count):
        c = i % len(CLASSES)
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 25, (240, 320, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        d = ImageDraw.Draw(img)
        x, y, r = int(rng.integers(60, 260)), int(rng.integers(60, 180)), int(rng.integers(30, 55))
        fill = tuple(int(v) for v in (255 - base))
        if c == 0:
            d.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif c == 1:
            d.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif c == 2:
            for k in range(0, 320, 24):
                d.rectangle((k, 0, k + 10, 240), fill=fill)
        elif c == 3:
            d.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=9)
        else:
            d.rectangle((x - r, y - 6, x + r, y + 6), fill=fill)
            d.rectangle((x - 6, y - r, x + 6, y + r), fill=fill)
        img.save(Path(root) / CLASSES[c] / f"{i:07d}.jpg", quality=90)
    return count


def make_folder(root: Path, n: int, workers: int) -> float:
    """N photos under root/<class>/ (reused when the folder already holds exactly N); seconds spent."""
    if root.is_dir() and sum(len(os.listdir(root / c)) for c in CLASSES if (root / c).is_dir()) == n:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
    t = time.perf_counter()
    step = 500
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_photos, [(str(root), s, min(step, n - s), 0) for s in range(0, n, step)]))
    return time.perf_counter() - t


# ----------------------------------------------------------------------------------------------------------
# Workers (each runs in its own process and prints one JSON line)


def _pil_file(args: tuple) -> int:
    from PIL import Image

    path, size, draft = args
    with Image.open(path) as img:
        if draft:
            img.draft("RGB", (size, size))
        img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return 1


def worker_pil(a) -> dict:
    from headstart.data.images import IMAGE_EXTENSIONS, _scan_folder

    _, files, _ = _scan_folder(Path(a.dir), "training", IMAGE_EXTENSIONS)
    size = stored()
    out = {}
    for draft in (False, True):
        t = time.perf_counter()
        with ProcessPoolExecutor(a.workers) as pool:
            sum(pool.map(_pil_file, [(f, size, draft) for f in files], chunksize=64))
        out["pil_draft" if draft else "pil_plain"] = len(files) / (time.perf_counter() - t)
    return out


def stored() -> int:
    import math

    return math.ceil(IMAGE_SIZE / 0.875)


def counting_decodes() -> list:
    """Patch the store's decoder to count the images it decodes (in this process)."""
    import headstart.data.store as st

    seen, real = [], st._try_decode

    def counting(path, size):
        seen.append(path)
        return real(path, size)

    st._try_decode = counting
    return seen


def worker_build(a) -> dict:
    from headstart.data.store import prepare

    t = time.perf_counter()
    n = len(prepare(a.dir, stored(), a.store_dir, workers=a.workers, progress=False, verify=False))
    seconds = time.perf_counter() - t
    return {"images": n, "seconds": seconds, "rate": n / seconds, "peak_rss_mb": peak_rss_mb()}


def worker_fit(a) -> dict:
    import headstart as hs
    from headstart.data.store import stores_of

    decoded = counting_decodes()
    t = time.perf_counter()
    data = hs.data.image_folder(a.dir, stored_size=stored(), store="disk", store_dir=a.store_dir)
    open_s = time.perf_counter() - t
    model = hs.create_model(WEIGHTS[0], weights=WEIGHTS[1], image_size=IMAGE_SIZE)
    t = time.perf_counter()
    run = hs.fit(model, data, "linear-probe", epochs=1, batch_size=256, progress=False, cache="on",
                 solver="sgd", cache_dir=str(Path(a.store_dir) / "features"), out=str(Path(a.store_dir) / "run-probe"))
    store_bytes = sum(f.stat().st_size for p in stores_of(a.dir, a.store_dir) for f in p.iterdir())
    return {"decoded_by_second_process": len(decoded), "open_seconds": open_s, "fit_seconds": time.perf_counter() - t,
            "val_accuracy": run.best_metrics.get("val/accuracy"), "peak_rss_mb": peak_rss_mb(),
            "store_gb": store_bytes / 1e9, "train_images": len(data.train)}


def _timed(fn, blocks: int) -> float:
    t = time.perf_counter()
    for _ in range(blocks):
        fn()
    return time.perf_counter() - t


def worker_throughput(a) -> dict:
    import torch

    import headstart as hs
    from headstart.data import ImageData, make_batcher
    from headstart.features import extract_features

    torch.manual_seed(0)
    full = hs.data.image_folder(a.dir, stored_size=stored(), store="disk", store_dir=a.store_dir, val_fraction=0)
    n = min(a.subset, len(full.train))
    disk = full.train.subset(torch.randperm(len(full.train))[:n].sort().values)
    memory = ImageData(disk.images[torch.arange(n)], disk.targets, list(disk.classes), disk.paths)
    model = hs.create_model(WEIGHTS[0], len(disk.classes), weights=WEIGHTS[1], image_size=IMAGE_SIZE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    results: dict = {"subset": n}
    gen = torch.Generator().manual_seed(0)

    def loader(data):
        b = make_batcher(data, model.spec, train=True)

        def run():
            for idx in torch.randperm(n, generator=gen)[:32 * a.steps].split(32):
                b.inputs(idx, gen)
        return run, 32 * a.steps

    def steps(data):
        b = make_batcher(data, model.spec, train=True)

        def run():
            model.train()
            for idx in torch.randperm(n, generator=gen)[:32 * a.steps].split(32):
                loss = torch.nn.functional.cross_entropy(model(b.inputs(idx, gen)), data.targets[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return run, 32 * a.steps

    def features(data):
        part = data.subset(torch.randperm(n, generator=gen)[:128 * a.steps].sort().values)
        b = make_batcher(part, model.spec, train=False)
        return (lambda: extract_features(model.backbone, b, batch_size=128)), len(part)

    for name, make in (("loader", loader), ("fine_tune_steps", steps), ("feature_extraction", features)):
        times = {"store": 0.0, "memory": 0.0}
        images = 0
        for side in (disk, memory):  # warm-up, untimed: first-call costs (allocator, folding) on neither side
            make(side)[0]()
        for rep in range(a.repeats):  # alternate, starting with each side once
            for side in (("store", "memory") if rep % 2 == 0 else ("memory", "store")):
                fn, k = make(disk if side == "store" else memory)
                times[side] += _timed(fn, 1)
            images += k
        results[name] = {side: images / s for side, s in times.items()}
        results[name]["store_vs_memory"] = times["memory"] / times["store"]
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def worker_rank(a) -> dict:
    import torch

    import headstart as hs
    from headstart.data import iterate_batches
    from headstart.data.images import MappedImages

    decoded = counting_decodes()
    rows: set = set()
    real = MappedImages.__getitem__

    def recording(self, idx):
        if isinstance(idx, torch.Tensor):
            rows.update(self._select(idx).tolist())
        return real(self, idx)

    MappedImages.__getitem__ = recording
    data = hs.data.image_folder(a.dir, stored_size=stored(), store="disk", store_dir=a.store_dir, val_fraction=0)
    t = time.perf_counter()
    for idx in iterate_batches(len(data.train), 256, True, 0, 0, rank=a.rank, world_size=2):
        data.train.images[idx]
    return {"rank": a.rank, "decoded": len(decoded), "rows": sorted(rows), "read_seconds": time.perf_counter() - t}


WORKERS = {"pil": worker_pil, "build": worker_build, "fit": worker_fit, "throughput": worker_throughput,
           "rank": worker_rank}


# ----------------------------------------------------------------------------------------------------------


def two_ranks(common: list[str]) -> dict:
    import subprocess

    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "rank", "--rank", str(r), *common],
                              stdout=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    a, b = (set(o["rows"]) for o in outs)
    return {"decoded": [o["decoded"] for o in outs], "rows_per_rank": [len(a), len(b)], "rows_read_by_both": len(a & b),
            "rows_read": len(a | b), "read_seconds": [round(o["read_seconds"], 2) for o in outs]}


def table(r: dict) -> str:
    t = r["throughput"]
    lines = [f"# Data beyond memory: {r['n']:,} synthetic photos (320x240 JPEG), stored at {r['stored_px']} px",
             "",
             f"Machine: {r['machine']['nproc']} cores, {r['memory_gb']:.0f} GB memory available; decoding with "
             f"{r['workers']} processes. Store: {r['fit']['store_gb']:.2f} GB on disk.",
             "",
             "| first use | images/s |", "|---|---|",
             f"| store build (`store=\"disk\"`) | {r['build']['rate']:.0f} |",
             f"| plain PIL loop, same processes (open, RGB, resize) | {r['pil']['pil_plain']:.0f} |",
             f"| plain PIL loop with JPEG draft mode | {r['pil']['pil_draft']:.0f} |",
             "",
             f"Second process: decoded {r['fit']['decoded_by_second_process']} images, opened the store in "
             f"{r['fit']['open_seconds']:.1f} s. Linear probe (EfficientNet-Lite0, {IMAGE_SIZE} px, 1 epoch, "
             f"{r['fit']['train_images']:,} training images): peak RSS **{r['fit']['peak_rss_mb'] / 1024:.2f} GB**, "
             f"{r['fit']['fit_seconds']:.0f} s, val accuracy {r['fit']['val_accuracy']:.3f}. Build process peak RSS "
             f"{r['build']['peak_rss_mb'] / 1024:.2f} GB.",
             "",
             f"Reading, {t['subset']:,}-image subset held both ways (images/s, alternating blocks):", "",
             "| | store | memory | store / memory |", "|---|---|---|---|"]
    for k in ("loader", "fine_tune_steps", "feature_extraction"):
        lines.append(f"| {k.replace('_', ' ')} | {t[k]['store']:.0f} | {t[k]['memory']:.0f} | "
                     f"{t[k]['store_vs_memory']:.2f} |")
    d = r["ranks"]
    lines += ["", f"Two ranks: decoded {d['decoded']} images; read {d['rows_per_rank']} rows, "
                  f"{d['rows_read_by_both']} by both (padding of an odd count), {d['rows_read']} in all."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="a small subset and few steps: a smoke test")
    p.add_argument("--dir", default=None, help="where the photos go (default /tmp/headstart-data-scale/photos-N)")
    p.add_argument("--store-dir", default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--subset", type=int, default=None, help="images of the side-by-side comparison")
    p.add_argument("--steps", type=int, default=None, help="batches per block")
    p.add_argument("--repeats", type=int, default=4, help="blocks per side")
    p.add_argument("--keep", action="store_true", help="keep the photos and the store afterwards")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.subset = a.subset or (1000 if a.quick else 20_000)
    a.steps = a.steps or (3 if a.quick else 20)
    base = Path("/tmp/headstart-data-scale")
    a.dir = a.dir or str(base / f"photos-{a.n}")
    a.store_dir = a.store_dir or str(base / f"stores-{a.n}")
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return
    shutil.rmtree(a.store_dir, ignore_errors=True)  # first use must decode
    made = make_folder(Path(a.dir), a.n, a.workers)
    common = ["--n", str(a.n), "--dir", a.dir, "--store-dir", a.store_dir, "--workers", str(a.workers),
              "--subset", str(a.subset), "--steps", str(a.steps), "--repeats", str(a.repeats)]
    from headstart.data.store import available_gb

    r = {"n": a.n, "stored_px": stored(), "workers": a.workers, "machine": machine(), "generate_seconds": made,
         "memory_gb": available_gb()}
    for step in ("pil", "build", "fit", "throughput"):
        r[step] = run_worker(__file__, [step, *common], timeout=48 * 3600)
        print(step, json.dumps(r[step]), flush=True)
    r["ranks"] = two_ranks(common)
    save("data_scale_quick" if a.quick else "data_scale", r, table(r))
    if not a.keep:
        shutil.rmtree(a.store_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
