"""configs/ must be found from a wheel install, not only from this checkout."""

import importlib.util
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


def test_oldest_pins_hold_every_dependency_at_its_lower_bound():
    """scripts/test_oldest.sh installs these: one pin per requirement of the dependencies and the test extra,
    in the lower bound's series (torch>=2.4 -> torch==2.4.*), so the suite can run on the oldest releases allowed."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "oldest_pins.py"), "test"], check=True, capture_output=True, text=True).stdout
    pins = dict(p.split("==") for p in out.split())
    text = (ROOT / "pyproject.toml").read_text()
    names = {"torch", "torchvision", "pot", "hydra-core", "numpy", "pandas", "mlxtend", "pytest", "timm", "transformers"}
    assert names <= set(pins), set(pins)
    for name, version in pins.items():
        bound = version.removesuffix(".*")
        assert f'"{name}>={bound.removesuffix(".0")}' in text or f'"{name}>={bound}' in text, (name, version)
    spec = importlib.util.spec_from_file_location("oldest_pins", ROOT / "scripts" / "oldest_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.oldest('"torch>=2.4",  # x\n"pot>=0.9.7,<0.10",\n"pytest>=7",\n"timm[all]>=0.9"') == \
        ["torch==2.4.*", "pot==0.9.7", "pytest==7.0.*", "timm==0.9.*"]
