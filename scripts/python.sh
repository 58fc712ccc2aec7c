# Sourced by install.sh, test.sh and app.sh: sets PY to the interpreter samdemo runs in.
#   * inside a virtual environment or a conda environment: that environment's python;
#   * otherwise the project's own .venv, created with python3 when missing (Debian 12's system
#     python3 refuses pip installs, PEP 668, and may have no `python` command).
# SAMDEMO_PYTHON=/path/to/python overrides the choice. SAMDEMO_DRY_RUN=1: print the choice, change nothing.
select_python() {
  local root="$1"
  if [ -n "${SAMDEMO_PYTHON:-}" ]; then
    PY="$SAMDEMO_PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PY="$VIRTUAL_ENV/bin/python"
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
    PY="$CONDA_PREFIX/bin/python"
  else
    PY="$root/.venv/bin/python"
    if [ ! -x "$PY" ] && [ -z "${SAMDEMO_DRY_RUN:-}" ]; then
      local base
      base="$(command -v python3 || command -v python || true)"
      if [ -z "$base" ]; then
        echo "error: no python3 found; install Python 3.10 or newer (Debian: apt-get install python3 python3-venv)" >&2
        return 1
      fi
      if ! "$base" -m venv "$root/.venv" >/dev/null 2>&1; then
        rm -rf "$root/.venv"
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
          # Debian ships venv's pip bootstrap separately (python3-venv / python3.X-venv)
          version="$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
          (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${version}-venv") >/dev/null 2>&1 \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 || true
        fi
        if ! "$base" -m venv "$root/.venv"; then
          echo "error: could not create a virtual environment with $base; install python3-venv (Debian/Ubuntu) or run inside a venv/conda env" >&2
          return 1
        fi
      fi
    fi
  fi
  if [ -n "${SAMDEMO_DRY_RUN:-}" ]; then
    echo "$PY"
  fi
}
