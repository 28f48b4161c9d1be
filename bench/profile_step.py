"""Where a ResNet-50 bf16 training step spends its time (torch.profiler), against the measured conv peak.

    python bench/profile_step.py     # ~1 min; writes bench/results/profile_resnet50.md

Explains the gap between the step's achieved FLOP/s and the machine's bf16 peak: the share of time in
convolution and matmul kernels (forward and backward) against everything else (BatchNorm, ReLU, casts that
autocast inserts, the optimizer, memory-format copies).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

COMPUTE = ("convolution", "conv2d", "mkldnn_convolution", "addmm", "mm", "linear", "matmul")


def category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("convolution", "conv")):
        return "convolution (fwd+bwd)"
    if any(k in n for k in ("addmm", "::mm", "linear", "matmul", "bmm")):
        return "matmul"
    if "batch_norm" in n or "native_batch_norm" in n:
        return "batch norm (fwd+bwd)"
    if any(k in n for k in ("relu", "threshold")):
        return "relu (fwd+bwd)"
    if any(k in n for k in ("_to_copy", "copy_", "to(", "clone", "contiguous")):
        return "casts and copies"
    if any(k in n for k in ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt", "mul_", "add_", "div_")):
        return "optimizer and elementwise updates"
    if "max_pool" in n or "pool" in n or "mean" in n:
        return "pooling"
    return "other"


def main() -> None:
    import headstart as hs
    from headstart.runtime import autocast

    torch.manual_seed(0)
    model = hs.create_model("timm:resnet50", 10).train().to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast(torch.device("cpu"), True):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    totals: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        totals[category(evt.key)] += evt.self_cpu_time_total
    whole = sum(totals.values())
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    lines = [f"# ResNet-50 bf16 training step profile ({machine()['date']}, batch 32, 224 px, channels_last)", "",
             "| category | share of self CPU time |", "|---|---|"]
    lines += [f"| {k} | {100 * v / whole:.1f}% |" for k, v in rows]
    lines += ["", "| top ops | self CPU ms per step | calls per step |", "|---|---|---|"]
    lines += [f"| `{e.key}` | {e.self_cpu_time_total / 3 / 1000:.0f} | {e.count // 3} |" for e in top]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile_resnet50.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
