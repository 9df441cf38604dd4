"""Two small vision transformers trained on mnist_small, fused through the Python API.

    .venv/bin/python scripts/fuse_vits.py [--epochs 12] [--seeds 0 1] [--rotary [--kv-heads 2]]

torchvision's VisionTransformer (3 layers, width 64, 4 heads, 7x7 patches of the 28x28 grey
digits) is trained from two seeds with AdamW, then fused with fusionctl.fuse_models by every
method, plain and with REPAIR; the table gives test accuracy (%) on mnist_small's 1,000 test
digits. The tracer aligns the residual stream, the MLPs and the attention heads (whole heads, and
the channels within each). --rotary: the same sizes written as LLaMA writes its blocks (RMSNorm,
rotary position embeddings on q and k, no position table), whose heads can move only whole;
--kv-heads K: with grouped-query attention (separate q, k, v projections, K key/value heads, each
read by heads / K query heads through scaled_dot_product_attention's enable_gqa).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import fusionctl
from fusionctl.data import load_dataset

METHODS = [("avg", {}), ("wb", {}), ("wb paper", {"sweeps": 0, "cost": "weight"}), ("wm", {}), ("am", {})]


class RotaryBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, kv_heads: int | None = None):
        super().__init__()
        self.heads, self.kv_heads, d = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = torch.nn.RMSNorm(dim), torch.nn.RMSNorm(dim)
        if kv_heads:
            self.q, self.k, self.v = (torch.nn.Linear(dim, n * d) for n in (heads, kv_heads, kv_heads))
        else:
            self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))
        angles = torch.outer(torch.arange(tokens).float(), 1.0 / 100 ** (torch.arange(0, d, 2).float() / d))
        self.register_buffer("cos", torch.cat([angles, angles], -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat([angles, angles], -1).sin(), persistent=False)

    def rotate(self, x):
        x1, x2 = x.chunk(2, -1)
        return x * self.cos + torch.cat([-x2, x1], -1) * self.sin

    def forward(self, x):
        b, n, c = x.shape
        h = self.norm1(x)
        if self.kv_heads:
            q, k, v = (f(h).view(b, n, -1, c // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        else:
            q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        att = torch.nn.functional.scaled_dot_product_attention(self.rotate(q), self.rotate(k), v, enable_gqa=bool(self.kv_heads))
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class RotaryViT(torch.nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 3, patch: int = 7, side: int = 28, kv_heads: int | None = None):
        super().__init__()
        self.embed = torch.nn.Conv2d(1, dim, patch, patch)
        self.blocks = torch.nn.Sequential(*[RotaryBlock(dim, heads, (side // patch) ** 2, kv_heads) for _ in range(layers)])
        self.norm, self.head = torch.nn.RMSNorm(dim), torch.nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x).flatten(2).transpose(1, 2))).mean(1))


def vit(seed: int, rotary: bool = False, kv_heads: int | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    if rotary:
        return RotaryViT(kv_heads=kv_heads)
    model = torchvision.models.VisionTransformer(image_size=28, patch_size=7, num_layers=3, num_heads=4, hidden_dim=64,
                                                 mlp_dim=128, num_classes=10)
    model.conv_proj = torch.nn.Conv2d(1, 64, 7, 7)  # grey digits: one input channel
    return model


def train(seed: int, train_split, epochs: int, rotary: bool, kv_heads: int | None = None, batch: int = 64, lr: float = 2e-3) -> torch.nn.Module:
    model, g = vit(seed, rotary, kv_heads), torch.Generator().manual_seed(seed)
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
    ap.add_argument("--rotary", action="store_true", help="LLaMA-style blocks with rotary embeddings instead of torchvision's ViT")
    ap.add_argument("--kv-heads", type=int, default=None, help="with --rotary: grouped-query attention with this many key/value heads")
    args = ap.parse_args()
    if args.kv_heads and not args.rotary:
        ap.error("--kv-heads needs --rotary (torchvision's ViT has no grouped-query attention)")
    splits = load_dataset("mnist_small")
    start = time.perf_counter()
    models = [train(s, splits.train, args.epochs, args.rotary, args.kv_heads) for s in args.seeds]
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
