"""fusionctl: Wasserstein-barycenter model fusion and linear mode connectivity experiments.

Python API (torch is imported on first use, so the command line starts fast):
fusionctl.derive_spec(model, example_inputs) and fusionctl.fuse_models(models, ...), see fusionctl/api.py;
fusionctl.barriers(models, data): loss and error barriers along naive and aligned lines (fusionctl/connectivity.py);
fusionctl.alignment_report(spec, model): what a spec aligns, group by group (markdown);
fusionctl.AlignmentSpec, Axis and Unit to write a spec by hand (fusionctl/models/spec.py);
fusionctl.Permutation: how an exact coupling between equal widths is held, fusionctl.Merge: solver=zipit's (fusionctl/ot/permutation.py);
fusionctl.FusionctlError: what every call raises for input it refuses, with one line saying what to change.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("derive_spec", "fuse_models"):
        from fusionctl import api

        return getattr(api, name)
    if name == "barriers":
        from fusionctl.connectivity import barriers

        return barriers
    if name == "alignment_report":
        from fusionctl.models.spec_report import alignment_report

        return alignment_report
    if name in ("AlignmentSpec", "Axis", "Unit"):  # for writing a spec by hand
        from fusionctl.models import spec

        return getattr(spec, name)
    if name in ("Permutation", "Merge"):
        from fusionctl.ot import permutation

        return getattr(permutation, name)
    if name == "FusionctlError":
        from fusionctl.errors import FusionctlError

        return FusionctlError
    raise AttributeError(f"module 'fusionctl' has no attribute {name!r}")
