#!/usr/bin/env bash
# make bench / make bench-smoke. The full run needs .venv-tools (make tools-venv) for the
# sentence-transformers reference; the smoke run needs only .venv and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--smoke" ]; then
  .venv/bin/python bench/telemetry_overhead.py --smoke --out "${BENCH_TELEMETRY_OUT:-/tmp/bench-telemetry-smoke.json}"
  exec .venv/bin/python bench/bench.py --smoke --out "${BENCH_OUT:-/tmp/bench-smoke.json}"
fi
# Telemetry on vs off, in-process, and the cold start (bench/telemetry.json).
.venv/bin/python bench/telemetry_overhead.py
exec .venv/bin/python bench/bench.py "$@"
