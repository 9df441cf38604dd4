"""Accuracy and cross-entropy of one model on a split."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fusionctl.data import Split


def evaluate(model: torch.nn.Module, split: Split, batch_size: int = 2048, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) over the whole split."""
    loss, acc, _ = evaluate_with_proba(model, split, batch_size, device, keep_proba=False)
    return loss, acc


@torch.inference_mode()
def evaluate_with_proba(model: torch.nn.Module, split: Split, batch_size: int = 2048, device="cpu", keep_proba: bool = True,
                        desc: str | None = None):
    """(mean cross-entropy, accuracy, class probabilities on the CPU or None) from one forward pass
    over the split: a base model's row and its share of the ensemble need not read the data twice.
    desc: label of a progress bar over the samples (on a terminal only), for splits that take minutes."""
    model.eval()
    total_loss, correct, probs = 0.0, 0, []
    bar = tqdm(total=len(split), desc=desc, unit="sample", disable=desc is None or not sys.stderr.isatty(), leave=False)
    for start in range(0, len(split), batch_size):
        x = split.x[start : start + batch_size].to(device)
        y = split.y[start : start + batch_size].to(device)
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        if keep_proba:
            probs.append(torch.softmax(logits, 1).cpu())
        bar.update(len(x))
    bar.close()
    n = max(len(split), 1)
    return total_loss / n, correct / n, (torch.cat(probs) if probs else torch.zeros(0)) if keep_proba else None
