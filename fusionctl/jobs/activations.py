"""Unit activations per alignment group on the first training inputs.

A group's units are read where the spec says they are written (fusion/units.py), before any
norm or nonlinearity; every model is probed at the same place, so costs compare like with like.
The activations are streamed batch by batch into z-scored features (fusion/features.py).
"""

from __future__ import annotations

from fusionctl.config import ModelConfig
from fusionctl.data import Splits
from fusionctl.fusion.units import stream_unit_features
from fusionctl.jobs.bases import state_config
from fusionctl.models import build_from_state, model_spec


def activation_probe(model_cfg: ModelConfig, splits: Splits, device="cpu", batch_size: int = 64, variants=()):
    """A function (states, samples, writers=()) -> per state {group: (n, d) z-scored features}, for
    states of `model_cfg`'s architecture (any widths), streamed over the first `samples` training
    inputs; with writers named, also per state {writer: ...} (fusion.units.stream_unit_features).
    variants: the other bases' and the fused model's configs, where a traced model's widths come
    from its constructor (jobs.bases.state_config)."""
    spec = model_spec(model_cfg, splits.input_shape, splits.num_classes, splits.vocab)
    config = state_config(model_cfg, splits, variants)

    def probe(states: list[dict], samples: int, writers=()):
        models = [build_from_state(config(s), splits, s, device) for s in states]
        x = splits.train.x[:samples]
        return stream_unit_features(models, spec, (x[i : i + batch_size].to(device) for i in range(0, len(x), batch_size)), writers)

    return probe
