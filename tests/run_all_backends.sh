#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend (the backend is fixed at
# the first `import keras`, so each needs its own pytest process).
# Exit code: 0 if every backend passed, 1 otherwise. pytest's exit code 5
# ("no tests collected", e.g. a -k filter matching only other backends'
# tests) is reported but not counted as a failure.
set -u
cd "$(dirname "$0")/.."
status=0
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider tests "$@"
  rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "WARNING: no tests were collected under $backend" >&2
  elif [ "$rc" -ne 0 ]; then
    status=1
  fi
done
exit $status
