"""Pure optimal-transport math on tensors: no models, no configs."""

from fusionctl.ot.barycenter import (
    BarycenterResult,
    free_support_barycenter,
    sq_distances,
)
from fusionctl.ot.solver import solve_ot

__all__ = ["BarycenterResult", "free_support_barycenter", "solve_ot", "sq_distances"]
