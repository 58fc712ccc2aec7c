#!/usr/bin/env bash
# Install samdemo and its pinned dependencies (scripts/python.sh says into which Python: the
# active venv/conda env, else ./.venv, created with python3).
#   bash scripts/install.sh          runtime only
#   bash scripts/install.sh --test   runtime + test dependencies
# sam2==1.1.0 is an sdist: pip builds it in an isolated environment that asks for an unpinned
# torch. PIP_CONSTRAINT reaches that build environment too, so it gets the same pinned torch
# (a CPU wheel on CPU machines) instead of downloading a CUDA one; SAM2_BUILD_CUDA=0 skips
# the optional CUDA extension (only used for mask post-processing, which samdemo does not use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
select_python "$PWD"
[ -n "${SAMDEMO_DRY_RUN:-}" ] && exit 0
export PIP_CONSTRAINT="$PWD/requirements.txt" SAM2_BUILD_CUDA=0
"$PY" -m pip install --upgrade-strategy only-if-needed -r requirements.txt ${1:+-r requirements-test.txt}
# the project itself, editable (the checkout is the code) and without touching the pinned set;
# it puts the `samdemo` command next to the interpreter
"$PY" -m pip install --no-deps -e . >/dev/null
echo "samdemo installed for $PY"
