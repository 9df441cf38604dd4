"""Accuracy and cross-entropy of one model on a split."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fusionctl.data import Split
from fusionctl.errors import FusionctlError


IGNORE = -100  # a label that is not scored (torch's cross_entropy default, Hugging Face's padding)


def logits_of(out) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, a `.logits` (a Hugging Face output) or
    "logits" entry, or a tuple's first tensor."""
    if torch.is_tensor(out):
        return out
    found = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if found is None and isinstance(out, (tuple, list)) and out:
        found = out[0]
    if not torch.is_tensor(found):
        raise FusionctlError(f"the model returned a {type(out).__name__} without logits; return a tensor of logits, or an output with .logits")
    return found


def per_label(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., *y.shape, classes) against labels y (one per sample, or per token of a sequence
    model) as (..., N, classes) and (..., N): leading axes of logits (points) are kept."""
    lead = logits.shape[: logits.dim() - y.dim() - 1]
    return logits.reshape(*lead, -1, logits.shape[-1]), y.reshape(-1).expand(*lead, -1)


def token_hits(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct predictions, scored labels) over the labels; a label equal to IGNORE is not scored."""
    flat, labels = per_label(logits, y)
    scored = labels != IGNORE
    return ((flat.argmax(-1) == labels) & scored).sum(-1), scored.sum(-1)


def label_scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scored label (IGNORE left out): its cross-entropy and whether the prediction is right."""
    flat, labels = per_label(logits, y)
    keep = labels != IGNORE
    flat, labels = flat[keep], labels[keep]
    classes = flat.shape[-1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise FusionctlError(f"the labels run from {int(labels.min())} to {int(labels.max())}, but the model gives {classes} logits per "
                             f"example; give labels in 0..{classes - 1} ({IGNORE} for one that is not scored)")
    return F.cross_entropy(flat, labels, reduction="none"), flat.argmax(-1) == labels


@torch.inference_mode()
def held_out_scores(model: torch.nn.Module, split: Split, batch_size: int = 2048, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """label_scores over a split, on the CPU."""
    model.eval()
    parts = [label_scores(logits_of(model(split.x[i : i + batch_size].to(device))), split.y[i : i + batch_size].to(device))
             for i in range(0, len(split), batch_size)]
    return torch.cat([p[0].cpu() for p in parts]), torch.cat([p[1].cpu() for p in parts])


def token_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the labels that are not IGNORE."""
    flat, labels = per_label(logits, y)
    return F.cross_entropy(flat.movedim(-1, 1) if flat.dim() > 2 else flat, labels, reduction="none", ignore_index=IGNORE).sum(-1)


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
        logits = logits_of(model(x))
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        if keep_proba:
            probs.append(torch.softmax(logits, 1).cpu())
        bar.update(len(x))
    bar.close()
    n = max(len(split), 1)
    return total_loss / n, correct / n, (torch.cat(probs) if probs else torch.zeros(0)) if keep_proba else None
