#!/usr/bin/env bash
# Install what the tests need into .venv and run them: scripts/test.sh [pytest args]
#
# PostgreSQL tests run when EDITSTORE_TEST_POSTGRES names a database, e.g.
#   EDITSTORE_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest "$@"
