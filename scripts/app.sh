#!/usr/bin/env bash
# Start the app with the interpreter scripts/install.sh installed into: bash scripts/app.sh [app.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
select_python "$PWD"
exec "$PY" app.py "$@"
