#!/usr/bin/env bash
# Both UIs on the project's own stores, and the scheduled deployments served against the Prefect server,
# until Ctrl-C (which stops all three):
#   MLflow   http://127.0.0.1:5000   runs, metrics, plots, GIFs, the model registry (mlflow.db, mlartifacts/)
#   Prefect  http://127.0.0.1:4200   deployments, schedules, flow runs ("Run" starts one here, in this tree)
#
#   bash scripts/ui.sh [--set key=value ...]   # arguments go to `python -m pipelines.serve`
#
# MLFLOW_PORT / PREFECT_PORT change the ports. MLFLOW_TRACKING_URI, if set, is the store shown (an http(s)
# URI is a tracking server with its own UI: then only Prefect starts). Logs go to a temporary directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"  # prefect.toml: the Prefect home is .prefect/ in the project
fail() { echo "ui: error: $*" >&2; exit 1; }

[ -x .venv/bin/mlflow ] || fail "no .venv in $root: run 'make install' first"
mlflow_port="${MLFLOW_PORT:-5000}"
prefect_port="${PREFECT_PORT:-4200}"
store="${MLFLOW_TRACKING_URI:-sqlite:///$root/mlflow.db}"
logs="$(mktemp -d "${TMPDIR:-/tmp}/lewm-ui.XXXXXX")"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
up() { .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" \
           2>/dev/null; }

running() { [ -e "/proc/$1" ] && ! grep -q ') Z' "/proc/$1/stat" 2>/dev/null; }  # a zombie is done

pids=()  # each started with setsid: its own process group, so stopping one stops its workers too
stop() {  # the last started first: `serve` hangs on SIGTERM once its server is gone
    trap - EXIT INT TERM
    local i pid
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid="${pids[i]}"
        kill -TERM -- "-$pid" 2>/dev/null || continue
        for _ in $(seq 60); do
            running "$pid" || break
            sleep 0.5
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    wait || true
    echo "ui: stopped (logs in $logs)"
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_up() {  # url, name, pid, log
    for _ in $(seq 360); do
        up "$1" && return 0
        if ! kill -0 "$3" 2>/dev/null; then
            tail -n 20 "$4" >&2
            fail "$2 exited (log: $4)"
        fi
        sleep 0.5
    done
    fail "$2 not answering at $1 after 3 minutes (log: $4)"
}

if [[ "$store" == http://* || "$store" == https://* ]]; then
    mlflow_url="$store"
    echo "ui: MLflow: MLFLOW_TRACKING_URI is a tracking server, its UI is $store"
else
    port_free "$mlflow_port" || fail "port $mlflow_port is in use (set MLFLOW_PORT)"
    mlflow_url="http://127.0.0.1:$mlflow_port"
    echo "ui: starting the MLflow server on $store"
    # no GenAI job workers (seven processes this project does not use)
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    setsid .venv/bin/mlflow server --backend-store-uri "$store" --default-artifact-root "$root/mlartifacts" \
        --host 127.0.0.1 --port "$mlflow_port" --workers 1 >"$logs/mlflow.log" 2>&1 &
    pids+=($!)
fi

port_free "$prefect_port" || fail "port $prefect_port is in use (set PREFECT_PORT)"
# the server's UI calls this API address (without it, http://127.0.0.1:4200/api whatever the port), and
# pipelines.serve registers the deployments there
export PREFECT_API_URL="http://127.0.0.1:$prefect_port/api"
echo "ui: starting the Prefect server (home: ${PREFECT_HOME:-.prefect/})"
setsid .venv/bin/prefect server start --host 127.0.0.1 --port "$prefect_port" >"$logs/prefect.log" 2>&1 &
pids+=($!)
prefect_pid=$!
wait_up "http://127.0.0.1:$prefect_port/api/health" "the Prefect server" "$prefect_pid" "$logs/prefect.log"

setsid .venv/bin/python -m pipelines.serve "$@" >"$logs/serve.log" 2>&1 &
pids+=($!)
if [ "${#pids[@]}" -eq 3 ]; then
    wait_up "$mlflow_url/health" "the MLflow server" "${pids[0]}" "$logs/mlflow.log"
fi

echo "ui: MLflow   $mlflow_url   (store: $store)"
echo "ui:          open the experiment, then choose \"Model training\" at the top left for its runs"
echo "ui: Prefect  http://127.0.0.1:$prefect_port/deployments   (deployments served by pipelines.serve;" \
     "their flow runs execute in $root)"
echo "ui: Ctrl-C stops everything; logs in $logs"
wait -n || true
echo "ui: a process exited; stopping the others (its log is in $logs)" >&2
