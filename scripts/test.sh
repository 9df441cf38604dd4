#!/usr/bin/env bash
# Run the test suite (sets up .venv on a fresh machine). Extra arguments go to pytest,
# e.g. scripts/test.sh -m "not slow" for the fast tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test
export MPLBACKEND=Agg
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
exit "$rc"
