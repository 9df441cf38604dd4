"""Two small vision transformers trained on mnist_small, fused through the Python API.

    .venv/bin/python scripts/fuse_vits.py [--epochs 12] [--seeds 0 1]

torchvision's VisionTransformer (3 layers, width 64, 4 heads, 7x7 patches of the 28x28 grey
digits) is trained from two seeds with AdamW, then fused with fusionctl.fuse_models by every
method, plain and with REPAIR; the table gives test accuracy (%) on mnist_small's 1,000 test
digits. The tracer aligns the residual stream, the MLPs and the attention heads (whole heads, and
the channels within each).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import fusionctl
from fusionctl.data import load_dataset

METHODS = [("avg", {}), ("wb", {}), ("wb paper", {"sweeps": 0, "cost": "weight"}), ("wm", {}), ("am", {})]


def vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=28, patch_size=7, num_layers=3, num_heads=4, hidden_dim=64,
                                                 mlp_dim=128, num_classes=10)
    model.conv_proj = torch.nn.Conv2d(1, 64, 7, 7)  # grey digits: one input channel
    return model


def train(seed: int, train_split, epochs: int, batch: int = 64, lr: float = 2e-3) -> torch.nn.Module:
    model, g = vit(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = max(1, epochs * (len(train_split) // batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_split), generator=g)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(train_split.x[idx]), train_split.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, split) -> float:
    return float((model.eval()(split.x).argmax(1) == split.y).float().mean()) * 100


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    splits = load_dataset("mnist_small")
    start = time.perf_counter()
    models = [train(s, splits.train, args.epochs) for s in args.seeds]
    print(f"trained {len(models)} ViTs in {time.perf_counter() - start:.0f} s; "
          + ", ".join(f"seed {s}: test {accuracy(m, splits.test):.1f}" for s, m in zip(args.seeds, models)))
    print(fusionctl.derive_spec(models[0], splits.train.x[:2]).coverage)
    data = [(splits.train.x[i : i + 128], splits.train.y[i : i + 128]) for i in range(0, 1024, 128)]
    print(f"{'method':<10} {'plain':>6} {'repair':>7}   (fuse_models, test accuracy %)")
    for name, settings in METHODS:
        row = [accuracy(fusionctl.fuse_models(models, method=name.split()[0], data=data, post=post, **settings), splits.test)
               for post in ((), ("repair",))]
        print(f"{name:<10} {row[0]:>6.1f} {row[1]:>7.1f}")


if __name__ == "__main__":
    main()
