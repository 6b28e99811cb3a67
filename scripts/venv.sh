# Sourced by scripts/run, scripts/test and the others: a virtual environment with Python >= 3.11
# in $VENV (default .venv), and install_locked (below).
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

# install_locked PIP-ARGS: the pinned, hash-checked dependencies of requirements-dev.lock (made by
# scripts/lock: the runtime pins and the test, schemathesis and demo extras), then the project
# itself (PIP-ARGS: `-e .` or `.`) without resolving again, so that nothing unpinned comes in.
# Already installed, it takes a few seconds. tests/test_lock_files.py fails on a stale lock.
install_locked() {
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.lock
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$@"
}
