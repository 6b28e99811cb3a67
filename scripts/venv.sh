# Sourced by scripts/run and scripts/test: a virtual environment with Python >= 3.11 in .venv.
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      "$candidate" -m venv "$VENV"
      break
    fi
  done
  [ -x "$VENV/bin/python" ] || { echo "Python 3.11 or newer is needed" >&2; exit 1; }
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
fi
