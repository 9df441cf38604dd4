#!/usr/bin/env bash
# Create .venv (if missing) and install fusionctl into it; sourced by demo.sh and test.sh.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "fusionctl needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.10+" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv (first run installs torch: a minute or more)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.fusionctl-install-$(sha256sum pyproject.toml | cut -c1-16)-${1:-base}
if [ ! -f "$stamp" ]; then
  extra=${1:+[$1]}
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import fusionctl, torch, ot, hydra' || { echo "installation of fusionctl into .venv failed" >&2; exit 1; }
  touch "$stamp"
fi
