"""Time to derive the alignment spec of torchvision models (target: resnet50 under 10 s on 2 cores).

    .venv/bin/python scripts/bench_trace.py [--archs resnet50 densenet121] [--side 224]

Prints, per model, the tracing time against one plain forward pass on the same input (the
tracer runs the model once, so the ratio is its overhead), and the coverage report.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from fusionctl.models.trace import derive_spec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet50", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121"])
    ap.add_argument("--side", type=int, default=224, help="input image side")
    args = ap.parse_args()
    print(f"threads={torch.get_num_threads()}  input 1x3x{args.side}x{args.side}")
    for arch in args.archs:
        model = torchvision.models.get_model(arch, weights=None).eval()
        x = torch.randn(1, 3, args.side, args.side)
        with torch.no_grad():
            start = time.perf_counter()
            model(x)
            forward = time.perf_counter() - start
        start = time.perf_counter()
        spec = derive_spec(model, x)
        seconds = time.perf_counter() - start
        print(f"{arch:>20}: trace {seconds:6.2f}s  forward {forward:6.3f}s  ratio {seconds / forward:5.1f}  {spec.coverage}", flush=True)


if __name__ == "__main__":
    main()
