"""configs/ must be found from a wheel install, not only from this checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_every_config_and_finds_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next(tmp_path.glob("fusionctl-*.whl"))
    shipped = {n.split("fusionctl/configs/", 1)[1] for n in zipfile.ZipFile(wheel).namelist() if "fusionctl/configs/" in n and n.endswith(".yaml")}
    ours = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped == ours
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "from fusionctl.commands.common import config_dir; print(config_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         check=True, capture_output=True, text=True).stdout.strip()
    assert Path(out) == target / "fusionctl" / "configs"
