#!/usr/bin/env bash
# The real `dvc repro` chain, every stage of every environment in params `envs`, on the `smoke` profile
# (params.yaml `profiles.smoke`: a tiny dataset, a few dozen training steps, a handful of pairs, probes and
# VoE episodes). It runs in a scratch copy of this working tree, with its own MLflow database, DVC cache and
# dvc.lock, so the committed default-profile results are never touched. The numbers it prints only show
# that every stage starts and finishes; they mean nothing about quality.
#
#   bash scripts/smoke.sh [DIR]   # DIR: a new or empty scratch directory, kept; default: a temporary one,
#                                 # removed when the chain passes and kept (for its logs) when it fails
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fail() { echo "smoke: error: $*" >&2; exit 1; }

[ -x .venv/bin/dvc ] || fail "no .venv with dvc in $root: run 'make install' first"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || fail "$root is not a git checkout"
grep -qx 'profile: cpu' params.yaml || fail "params.yaml: expected the top-level line 'profile: cpu'"

if [ $# -gt 0 ]; then
    scratch="$1"
    mkdir -p "$scratch"
    [ -z "$(ls -A "$scratch")" ] || fail "$scratch is not empty"
    keep=1
else
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/lewm-smoke.XXXXXX")"
    keep=0
fi
scratch="$(cd "$scratch" && pwd)"
trap 'echo "smoke: failed; the scratch copy is kept in $scratch" >&2' ERR

# The working tree as git sees it (tracked and new files, nothing ignored: no data, runs or caches).
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done \
    | tar --null -T - -cf - | tar -xf - -C "$scratch"
ln -s "$root/.venv" "$scratch/.venv"
cd "$scratch"
sed -i 's/^profile: cpu$/profile: smoke/' params.yaml
git init -q .
# Nothing from the caller's shell: its own tracking store, no Prefect server, no activated venv on PATH.
unset MLFLOW_TRACKING_URI PREFECT_API_URL VIRTUAL_ENV
export PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vx "$root/.venv/bin" | paste -sd: -)"

echo "smoke: dvc repro on the smoke profile in $scratch"
started=$SECONDS
.venv/bin/dvc repro
.venv/bin/dvc status | grep -q "up to date" || fail "dvc status after repro: stages still changed"
# Every stage's metrics file exists, parses and holds numbers (the full table: `dvc metrics show` in DIR).
.venv/bin/dvc metrics show --json | scripts/python -c '
import json, sys
for path, entry in json.load(sys.stdin)[""]["data"].items():
    count = len(entry.get("data", {}))
    print(f"smoke: {path}: {count} metrics")
    if count == 0:
        reason = entry.get("error", "empty")
        sys.exit(f"smoke: error: {path} holds no metrics: {reason}")
'
echo "smoke: every stage ran in $((SECONDS - started)) s"
if [ "$keep" -eq 0 ]; then
    rm -rf "$scratch"
fi
