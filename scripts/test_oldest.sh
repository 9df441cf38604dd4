#!/usr/bin/env bash
# Run the test suite on the oldest releases pyproject.toml allows (scripts/oldest_pins.py: torch 2.4,
# numpy 1.23, pandas 1.5, ...), in .venv-oldest, so the declared ranges stay true. Not part of CI:
# torch 2.4's CUDA build takes about 5 GB and a few minutes to fetch. Python 3.10 or 3.11 (numpy 1.23
# has no wheels for later ones; PYTHON=... picks it). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-oldest/bin/python ]; then
  echo "creating .venv-oldest (torch 2.4 and the other oldest releases)" >&2
  "$PY" -m venv .venv-oldest
fi
# shellcheck disable=SC2046  # one argument per pin
.venv-oldest/bin/python -m pip install -q --disable-pip-version-check $(.venv-oldest/bin/python scripts/oldest_pins.py test)
.venv-oldest/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
.venv-oldest/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -i -E "^(torch|torchvision|numpy|pandas|scipy|matplotlib|pot|hydra-core|timm|transformers) " >&2
export MPLBACKEND=Agg
.venv-oldest/bin/python -m pytest -q "$@"
