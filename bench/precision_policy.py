"""Training-step speed of EfficientNet-Lite0 under three precision policies: fp32, bf16 autocast, and bf16 with
the depthwise convolutions kept in fp32 ("mixed"), one training step at a time.

    python bench/precision_policy.py            # Lite0 at 224 px and its last two layer groups, batch 32 (~3 min)
    python bench/precision_policy.py --quick    # smoke test at toy sizes, not a result

"mixed" is what `precision: bf16` does on such a model (headstart's `depthwise_in_fp32`): the pointwise
convolutions hold most of Lite0's FLOPs and run on the CPU's bf16 matrix units, while oneDNN's bf16 depthwise
backward is slow. It is faster, but not `auto`'s choice: full fine-tuning lost accuracy under it
(bench/results/precision_bf16_depthwise.md). Each policy gets its own model and
AdamW; their steps alternate in one process (the same machine state for all three), and the median step after
two warm-up rounds is reported. Parts: the whole network on 224 px images (full fine-tuning) and the suffix that
partial fine-tuning of the last two groups trains on the prefix cache (blocks 5-6, head conv, classifier; input
the cached 112 x 14 x 14 activations). Results: bench/results/precision_policy.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

from headstart.runtime import depthwise_in_fp32  # noqa: E402

POLICIES = ("fp32", "bf16", "mixed")


def build(part: str) -> nn.Module:
    import timm

    torch.manual_seed(0)
    m = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    if part == "suffix":
        m = nn.Sequential(m.blocks[5], m.blocks[6], m.conv_head, m.bn2, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          m.classifier)
    return m.to(memory_format=torch.channels_last).train()


def measure(part: str, batch: int, size: int, rounds: int) -> dict[str, float]:
    shape = (batch, 3, size, size) if part == "full" else (batch, 112, size // 16, size // 16)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    models = {p: build(part) for p in POLICIES}
    opts = {p: torch.optim.AdamW(m.parameters(), lr=1e-4) for p, m in models.items()}
    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    for r in range(rounds + 2):
        for p in POLICIES:
            start = time.perf_counter()
            # "mixed" is headstart's own pin, as `precision: bf16` applies it to a training epoch
            with depthwise_in_fp32(models[p], enabled=p == "mixed"):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p != "fp32"):
                    loss = F.cross_entropy(models[p](x).float(), y)
                loss.backward()
            opts[p].step()
            opts[p].zero_grad(set_to_none=True)
            if r >= 2:
                times[p].append(time.perf_counter() - start)
    return {p: round(batch / sorted(t)[len(t) // 2], 1) for p, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    batch, size, rounds = (4, 64, 2) if args.quick else (32, 224, 6)
    results = {part: measure(part, batch, size, rounds) for part in ("full", "suffix")}
    record = {"machine": machine(), "quick": args.quick, "batch": batch, "image_size": size, "rounds": rounds,
              "images_per_s": results}
    lines = [f"# Training-step precision policies, EfficientNet-Lite0{' (quick: toy sizes, not a result)' * args.quick}",
             "", f"Batch {batch}, {size} px, channels_last, AdamW; images/s from the median of {rounds} alternating "
             "steps per policy after 2 warm-up rounds, all in one process.", "",
             "| part | fp32 | bf16 autocast | bf16, depthwise in fp32 |", "|---|---:|---:|---:|"]
    lines += [f"| {part} | {r['fp32']} | {r['bf16']} | {r['mixed']} |" for part, r in results.items()]
    save("precision_policy" + ("_quick" if args.quick else ""), record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
