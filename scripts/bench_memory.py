"""Peak memory and time of fusing two torchvision networks, per method, each in a process of its own.

    .venv/bin/python scripts/bench_memory.py [--arch vit_b_16] [--methods wm "wb weight" wb] [--images 16]

Two randomly initialised copies of `--arch` (no download; the weights' values do not change the
memory an alignment needs) are fused through fusionctl.fuse_models on random 224x224 images: `wm`
(weight matching), `wb weight` (the default without data: cost=weight) and `wb` (the default with
data: the activation probe, two alignments and two held-out scorings). Each method runs in a fresh
interpreter, so its peak resident memory (ru_maxrss) is its own: models, traced spec and the
permutation self-check included. Prints seconds and peak GiB per method, and ratios to wm's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = {"wm": ("wm", {}, False), "wb weight": ("wb", {"cost": "weight"}, False), "wb": ("wb", {}, True)}


def one(arch: str, name: str, images: int) -> dict:
    """Runs in the child process: build, fuse, report."""
    import torch
    import torchvision

    import fusionctl

    method, settings, with_data = METHODS[name]
    torch.manual_seed(0)
    models = [getattr(torchvision.models, arch)(num_classes=10).eval() for _ in range(2)]
    x, y = torch.randn(images, 3, 224, 224), torch.randint(0, 10, (images,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if with_data:
        fusionctl.fuse_models(models, method=method, data=[(x[i:i + 8], y[i:i + 8]) for i in range(0, images, 8)], **settings)
    else:
        fusionctl.fuse_models(models, method=method, example_inputs=x[:2], **settings)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": time.perf_counter() - start, "peak_gib": peak / 2**20, "models_gib": base / 2**20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_b_16", help="a torchvision classifier taking 224x224 RGB images")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--images", type=int, default=16, help="random images: the data of `wb` (in batches of 8)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.arch, args.child, args.images)))
        return
    print(f"two {args.arch} (random init), fusionctl.fuse_models, one process per method")
    print(f"{'method':>10} {'seconds':>8} {'peak GiB':>9} {'before fusing':>14}   ratios to wm")
    rows = {}
    for name in args.methods:
        out = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--images", str(args.images), "--child", name],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{name:>10} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        rows[name] = row = json.loads(out.stdout.strip().splitlines()[-1])
        ratios = f"time {row['seconds'] / rows['wm']['seconds']:.2f}, memory {row['peak_gib'] / rows['wm']['peak_gib']:.2f}" if "wm" in rows else ""
        print(f"{name:>10} {row['seconds']:>8.1f} {row['peak_gib']:>9.2f} {row['models_gib']:>14.2f}   {ratios}", flush=True)


if __name__ == "__main__":
    main()
