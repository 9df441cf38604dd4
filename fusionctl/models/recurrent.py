"""RNN (tanh), LSTM and GRU written out step by step, so torch.func.vmap can batch them over
parameter points (the landscape) and parameter names stay plain.

Gates are stacked in PyTorch's order: LSTM (i, f, g, o), GRU (r, z, n). Images are read as
sequences of rows: an input of shape (T, F), or (C, H, W) read as H steps of C*W features.
Text arrives as (T,) token ids and passes a token embedding first. A linear decoder reads the
last step's hidden state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fusionctl.models.spec import AlignmentSpec, Axis, Unit

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


class RecurrentLayer(nn.Module):
    def __init__(self, kind: str, inputs: int, hidden: int, bias: bool):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        g = GATES[kind]
        bound = 1.0 / math.sqrt(hidden)
        self.weight_ih = nn.Parameter(torch.empty(g * hidden, inputs).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(g * hidden, hidden).uniform_(-bound, bound))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(g * hidden).uniform_(-bound, bound))
            self.bias_hh = nn.Parameter(torch.empty(g * hidden).uniform_(-bound, bound))
        else:
            self.bias_ih = self.bias_hh = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, F) -> hidden states (B, T, hidden)."""
        b, steps, _ = x.shape
        gi_all = nn.functional.linear(x, self.weight_ih, self.bias_ih)  # one GEMM for every step
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        out = []
        for t in range(steps):
            gi = gi_all[:, t]
            gh = nn.functional.linear(h, self.weight_hh, self.bias_hh)
            if self.kind == "rnn":
                h = torch.tanh(gi + gh)
            elif self.kind == "lstm":
                i, f, g, o = (gi + gh).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                ir, iz, inn = gi.chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                h = (1 - z) * torch.tanh(inn + r * hn) + z * h
            out.append(h)
        return torch.stack(out, 1)


class TokenEmbedding(nn.Module):
    """An embedding stored as (dim, vocab): row i is embedding unit i, the layout of a linear
    layer's weight, so the units are aligned like any layer's (a one-hot input times weight.T)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, vocab))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(tokens, self.weight.T)


class RecurrentClassifier(nn.Module):
    def __init__(self, kind: str, input_shape: tuple[int, ...], num_classes: int, widths: list[int], bias: bool = False,
                 vocab: int = 0, embed: int = 0):
        super().__init__()
        self.embed = TokenEmbedding(vocab, embed) if vocab else None
        features = embed if vocab else input_shape[-1] * (input_shape[0] if len(input_shape) == 3 else 1)
        dims = [features, *widths]
        self.cells = nn.ModuleList(RecurrentLayer(kind, a, h, bias) for a, h in zip(dims[:-1], dims[1:]))
        self.decoder = nn.Linear(widths[-1], num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:  # (B, T) token ids
            x = self.embed(x)
        elif x.dim() == 4:  # (B, C, H, W): H steps of C*W features
            x = x.permute(0, 2, 1, 3).flatten(2)
        for cell in self.cells:
            x = cell(x)
        return self.decoder(x[:, -1])


def recurrent_spec(kind: str, widths: list[int], bias: bool, embed: int = 0) -> AlignmentSpec:
    g = GATES[kind]
    groups = tuple(f"h{i + 1}" for i in range(len(widths)))
    axes: dict[str, tuple[Axis | None, ...]] = {}
    if embed:
        axes["embed.weight"] = (Axis("emb"), None)
    for i, group in enumerate(groups):
        rows = Axis(group, outer=g)  # the gates of a unit share its coupling
        prev = Axis(groups[i - 1]) if i > 0 else (Axis("emb") if embed else None)
        axes[f"cells.{i}.weight_ih"] = (rows, prev)
        axes[f"cells.{i}.weight_hh"] = (rows, Axis(group))  # both axes: the Gromov-Wasserstein part
        if bias:
            axes[f"cells.{i}.bias_ih"] = (rows,)
            axes[f"cells.{i}.bias_hh"] = (rows,)
    axes["decoder.weight"] = (None, Axis(groups[-1]))
    if bias:
        axes["decoder.bias"] = (None,)
    units = {group: (Unit(f"cells.{i}"),) for i, group in enumerate(groups)} | ({"emb": (Unit("embed"),)} if embed else {})
    return AlignmentSpec((("emb",) if embed else ()) + groups, axes, units)

