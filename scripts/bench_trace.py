"""Time to derive the alignment spec of torchvision or timm models (target: resnet50 under 10 s on 2 cores).

    .venv/bin/python scripts/bench_trace.py [--archs resnet50 resnext50_32x4d] [--side 224]
    .venv/bin/python scripts/bench_trace.py --timm --archs efficientnet_b0 densenet121 --side 64 --double

--timm builds the models with timm.create_model (pip install timm; not a dependency of
fusionctl). --double runs in float64: some randomly initialised nets are chaotic (in timm's
efficientnetv2_rw_t a 1e-15 relative change of one weight moves the outputs by 1e-6), so float32
rounding alone can move their outputs far; a wrong permutation moves them by O(1) either way.

Prints, per model, the tracing time against one plain forward pass on the same input (the
tracer runs the model once, so the ratio is its overhead), the coverage report, and how far a
random permutation of every traced group (heads and grouped-conv blocks as such) moves the
outputs, relative to their size (BatchNorm statistics randomised first, so a wrong mapping shows).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from fusionctl.fusion.transport import random_couplings, transport
from fusionctl.models import load_state
from fusionctl.models.trace import derive_spec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet50", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121",
                                                   "resnext50_32x4d", "regnet_y_400mf", "googlenet", "inception_v3"])
    ap.add_argument("--side", type=int, default=224, help="input image side")
    ap.add_argument("--timm", action="store_true", help="build the models with timm.create_model")
    ap.add_argument("--double", action="store_true", help="run in float64")
    args = ap.parse_args()
    dtype = torch.float64 if args.double else torch.float32
    print(f"threads={torch.get_num_threads()}  input 1x3x{args.side}x{args.side} {dtype}")
    for arch in args.archs:
        if args.timm:
            import timm

            model = timm.create_model(arch, pretrained=False).eval().to(dtype)
        else:
            model = torchvision.models.get_model(arch, weights=None).eval().to(dtype)
        x = torch.randn(1, 3, args.side, args.side, dtype=dtype)
        with torch.no_grad():
            start = time.perf_counter()
            model(x)
            forward = time.perf_counter() - start
        start = time.perf_counter()
        spec = derive_spec(model, x)
        seconds = time.perf_counter() - start
        print(f"{arch:>20}: trace {seconds:6.2f}s  forward {forward:6.3f}s  ratio {seconds / forward:5.1f}  "
              f"permuted: {permuted_change(model, spec, x):.1e}  {spec.coverage}", flush=True)


@torch.no_grad()
def permuted_change(model, spec, x) -> float:
    """max |f'(x) - f(x)| / max |f(x)| for f' = the model with every traced group permuted at random.
    Zero-initialised Linears (torchvision's ViT head, some of timm's) get random weights first, so
    the output is not zero whatever the permutation."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            m.weight.normal_(0, m.in_features ** -0.5, generator=g)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    load_state(model, transport(state, spec, random_couplings(spec, state, g)))
    return float((model(x) - before).abs().max() / before.abs().max())


if __name__ == "__main__":
    main()
