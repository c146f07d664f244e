#!/usr/bin/env bash
# make bench / make bench-smoke. The full run needs .venv-tools (make tools-venv) for the
# sentence-transformers reference; the smoke run needs only .venv and takes about a minute.
# Besides bench.py (throughput, latency, cold start, peak RSS against the reference):
#   bench/soak.py            bursts of mixed traffic, server RSS over time, memory tuning off/on
#   bench/tokenize_cases.py  pathological text bodies: CPU, RSS, characters tokenised
#   bench/image_memory.py    peak memory per image, every format and mode at the limits
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--smoke" ]; then
  out="${BENCH_OUT:-/tmp/bench-smoke.json}"
  .venv/bin/python bench/telemetry_overhead.py --smoke --out "${BENCH_TELEMETRY_OUT:-/tmp/bench-telemetry-smoke.json}"
  .venv/bin/python bench/bench.py --smoke --out "$out"
  .venv/bin/python bench/soak.py --smoke --out "${out%.json}-soak.json"
  .venv/bin/python bench/tokenize_cases.py --quick
  .venv/bin/python bench/image_memory.py --quick --out "${out%.json}-image-memory.json"
  exit 0
fi
# Every file of a full run goes to a new directory (git-ignored; BENCH_DIR= chooses another):
# the committed results under bench/ are the runs the docs cite, never overwritten. Copy a run
# there (e.g. bench/results-<cpu>-<n>.json) to cite it.
dir="${BENCH_DIR:-bench/runs/$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$dir"
echo "make bench: writing $dir/"
# Telemetry on vs off, in-process, and the cold start.
.venv/bin/python bench/telemetry_overhead.py --out "$dir/telemetry.json"
.venv/bin/python bench/bench.py --out "$dir/results.json" "$@"
.venv/bin/python bench/soak.py --out "$dir/soak.json"
.venv/bin/python bench/tokenize_cases.py --out "$dir/tokenize_cases.json"
.venv/bin/python bench/image_memory.py --out "$dir/image_memory.json"
