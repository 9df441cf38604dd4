"""Accuracy and cross-entropy of one model on a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusionctl.data import Split


@torch.inference_mode()
def evaluate(model: torch.nn.Module, split: Split, batch_size: int = 2048, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) over the whole split."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x = split.x[start : start + batch_size].to(device)
        y = split.y[start : start + batch_size].to(device)
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = max(len(split), 1)
    return total_loss / n, correct / n


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, split: Split, batch_size: int = 2048, device="cpu") -> torch.Tensor:
    model.eval()
    return torch.cat([torch.softmax(model(split.x[s : s + batch_size].to(device)), 1).cpu() for s in range(0, len(split), batch_size)])
