#!/usr/bin/env bash
# Offline checkov scan of the Bicep templates under infra/.
#
#   bash tools/checkov.sh
#
# Creates/updates its own virtualenv (.venv-checkov, override with CHECKOV_VENV)
# from requirements-checkov.txt, then runs
#   checkov -d infra --framework bicep --skip-download
# Exits non-zero if any check fails, if any file fails to parse, if nothing was
# scanned, or if an inline skip has no reason. Skips live only in the Bicep as
#   // checkov:skip=CKV_AZURE_NN: reason
# inside the resource body, or, for parameter checks, in the comment lines directly
# above the parameter's decorators (checkov collects inline skips for resources only;
# this script applies the same rule to parameters and reports them as skipped).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHECKOV_VENV:-$ROOT/.venv-checkov}"
PYTHON="${PYTHON:-python3}"
REQ="$ROOT/requirements-checkov.txt"
STAMP="$VENV/.requirements-checkov.sha256"

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/checkov" || "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]]; then
  echo "checkov.sh: installing $(grep -v '^#' "$REQ" | tr '\n' ' ')into $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQ"
  echo "$want" > "$STAMP"
fi

cd "$ROOT"

# Every inline skip must carry a reason: "checkov:skip=CKV_X: <reason>".
bad_skips="$(grep -rnE 'checkov:skip=' infra --include='*.bicep' | grep -vE 'checkov:skip=CKV_[A-Z0-9_]+: *[^ ].{10,}' || true)"
if [[ -n "$bad_skips" ]]; then
  echo "checkov.sh: skip without a reason:" >&2
  echo "$bad_skips" >&2
  exit 1
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

set +e
"$VENV/bin/checkov" -d infra --framework bicep --skip-download --compact \
  --output cli --output json --output-file-path "console,$out/results.json"
rc=$?
set -e

"$VENV/bin/python" - "$out/results.json" "$rc" <<'PY'
import json
import re
import sys

path, rc = sys.argv[1], int(sys.argv[2])
try:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
except (OSError, ValueError) as exc:
    sys.exit(f"checkov.sh: no JSON report ({exc}); checkov exit code {rc}")
reports = data if isinstance(data, list) else [data]
summary = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
for report in reports:
    for key in summary:
        summary[key] += int(report.get("summary", {}).get(key, 0))

# Parameter checks ("string.<name>", ...): an inline skip in the comment block right above
# the parameter counts, as it does inside a resource body.
PARAM_KINDS = {"string", "securestring", "int", "bool", "object", "secureobject", "array"}


def param_skip_reason(failed):
    kind, _, name = failed.get("resource", "").partition(".")
    if kind.lower() not in PARAM_KINDS or not name:
        return None
    try:
        with open(failed["file_abs_path"], encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    decl = re.compile(rf"^\s*param\s+{re.escape(name)}\b")
    idx = next((i for i, line in enumerate(lines) if decl.match(line)), None)
    i = idx - 1 if idx is not None else -1
    while i >= 0 and (lines[i].lstrip().startswith("@") or lines[i].lstrip().startswith("//")):
        m = re.search(rf"checkov:skip={re.escape(failed['check_id'])}: *(.+)", lines[i])
        if m and lines[i].lstrip().startswith("//"):
            return m.group(1).strip()
        i -= 1
    return None


unskipped = 0
for report in reports:
    for failed in report.get("results", {}).get("failed_checks", []):
        reason = param_skip_reason(failed)
        if reason:
            summary["failed"] -= 1
            summary["skipped"] += 1
            print(f"checkov.sh: SKIPPED {failed['check_id']} for parameter {failed['resource']}: {reason}")
        else:
            unskipped += 1
if rc == 1 and unskipped == 0 and summary["failed"] == 0:
    rc = 0  # every failure was a parameter check skipped inline
print("checkov.sh: summary " + ", ".join(f"{k}={v}" for k, v in summary.items()))
problems = []
if rc != 0:
    problems.append(f"checkov exited with {rc}")
if summary["failed"]:
    problems.append(f"{summary['failed']} failed check(s)")
if summary["parsing_errors"]:
    problems.append(f"{summary['parsing_errors']} file(s) failed to parse")
if summary["passed"] == 0:
    problems.append("no checks passed: nothing was scanned")
if problems:
    sys.exit("checkov.sh: FAILED: " + "; ".join(problems))
print("checkov.sh: OK")
PY
