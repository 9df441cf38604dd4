"""`solver=ot`: Singh & Jaggi (2020) OT fusion, one anchored pass (METHOD.md E.3).

Each model is aligned once to a fixed anchor (model 0, or a random target when the widths
change, as in the authors' baseline), then the aligned models are averaged. In barycenter
terms this is exactly one OT step plus projection from the anchor's support.
"""

from __future__ import annotations

from dataclasses import replace

from fusionctl.config import OTFusionSettings
from fusionctl.fusion.barycenter import fuse_barycenter
from fusionctl.fusion.engine import FusionResult


def fuse_ot(spec, states, weights, target_sizes, settings: OTFusionSettings, ctx) -> FusionResult:
    same = spec.group_sizes(states[0]) == target_sizes
    init = settings.init if settings.init != "auto" else ("model0" if same else "random")
    return fuse_barycenter(spec, states, weights, target_sizes, replace(settings, init=init), ctx, passes=1)
