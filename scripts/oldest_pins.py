"""Print pip requirements for the oldest releases pyproject.toml allows: each lower bound's series at
its last patch release (torch>=2.4 -> torch==2.4.*, pot>=0.9.7 -> pot==0.9.7), for the dependencies
and the extras named (default: test). Used by scripts/test_oldest.sh.

    python scripts/oldest_pins.py [extra ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIREMENT = re.compile(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?>=([0-9][0-9.]*)[^"]*"')


def block(text: str, key: str) -> str:
    """The requirements list `key = [...]` of pyproject.toml, on one line or several up to a line "]"."""
    lines = text[re.search(rf"^{re.escape(key)} = \[", text, re.M).start() :].splitlines()
    if "]" in lines[0].split("#")[0]:
        return lines[0]
    return "\n".join(lines[: next(i for i, line in enumerate(lines) if line.strip().startswith("]")) + 1])


def oldest(requirements: str) -> list[str]:
    """name>=X.Y -> name==X.Y.* (X -> X.0.*), name>=X.Y.Z -> name==X.Y.Z."""
    pins = []
    for name, version in REQUIREMENT.findall(requirements):
        parts = version.rstrip(".").split(".")
        pins.append(f"{name}=={version}" if len(parts) >= 3 else f"{name}=={'.'.join((parts + ['0'])[:2])}.*")
    return pins


def main(extras: list[str]) -> None:
    text = PYPROJECT.read_text()
    chosen = "\n".join([block(text, "dependencies"), *(block(text, extra) for extra in extras)])
    print(" ".join(dict.fromkeys(oldest(chosen))))


if __name__ == "__main__":
    main(sys.argv[1:] or ["test"])
