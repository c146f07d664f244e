#!/usr/bin/env bash
# make bench / make bench-smoke. The full run needs .venv-tools (make tools-venv) for the
# sentence-transformers reference; the smoke run needs only .venv and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--smoke" ]; then
  exec .venv/bin/python bench/bench.py --smoke --out "${BENCH_OUT:-/tmp/bench-smoke.json}"
fi
exec .venv/bin/python bench/bench.py "$@"
