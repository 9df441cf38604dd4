"""Pure optimal-transport math on tensors: no models, no configs."""

from fusionctl.ot.barycenter import (
    BarycenterResult,
    free_support_barycenter,
    sq_distances,
)
from fusionctl.ot.permutation import Permutation
from fusionctl.ot.solver import solve_ot

__all__ = ["BarycenterResult", "Permutation", "free_support_barycenter", "solve_ot", "sq_distances"]
