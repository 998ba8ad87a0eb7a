#!/usr/bin/env bash
# cluster/mlflow-server.sh - an MLflow tracking server for a cluster's jobs.
#
# Many nodes must not write one SQLite file over NFS: the jobs talk HTTP to this one server,
# which alone writes its store (SQLite + artifacts) on the shared disk. Run it on a login node
# or as a long SLURM job (the #SBATCH lines below are used only by sbatch):
#
#   cluster/mlflow-server.sh --store /shared/$USER/mlflow                       # 127.0.0.1 only
#   cluster/mlflow-server.sh --store /shared/$USER/mlflow --host 0.0.0.0        # nodes reach it
#   sbatch cluster/mlflow-server.sh --store /shared/$USER/mlflow --host 0.0.0.0 # as a job
#
# It prints the URI for the jobs and writes it to <store>/tracking_uri. Then, before launching:
#   export MLFLOW_TRACKING_URI=$(cat /shared/$USER/mlflow/tracking_uri)
#   python sweeps/launch.py --grid ablation --backend slurm --profile mycluster
# (SLURM passes the variable to the jobs; `tracking.uri` left at its default defers to it.)
#
# --host decides who can connect, and the server has no authentication: the default 127.0.0.1
# serves this machine only; 0.0.0.0 (or one interface's address) lets compute nodes in, and
# anyone else on that network. Bind to the cluster's internal interface where you can.
#
# Offline route, no server at all: trial directories on the shared disk are complete without
# MLflow (set tracking.enabled=false, or let the jobs fail to reach it), and afterwards
#   python -m bilma sync --runs runs     # idempotent: mirrors every trial directory into MLflow
#
#SBATCH --job-name=mlflow-server
#SBATCH --time=7-00:00:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --output=mlflow-server-%j.log
set -euo pipefail

HOST=127.0.0.1
PORT=5000
STORE=${PWD}/mlflow-server
WORKERS=2
while (($#)); do
  case $1 in
    --host) HOST=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "mlflow-server.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
MLFLOW=${MLFLOW:-$(command -v mlflow || true)}
[[ -n $MLFLOW ]] || { echo "mlflow-server.sh: no 'mlflow' on PATH; activate the project's environment" >&2; exit 2; }

mkdir -p "$STORE/artifacts"
STORE=$(cd "$STORE" && pwd)
# The address the jobs use: this host's name when listening beyond loopback.
if [[ $HOST == 127.0.0.1 || $HOST == localhost ]]; then
  REACH=127.0.0.1
elif [[ $HOST == 0.0.0.0 ]]; then
  REACH=$(hostname -f 2>/dev/null || hostname)
else
  REACH=$HOST
fi
URI="http://${REACH}:${PORT}"
# MLflow 3 refuses Host headers other than localhost and private IPs: allow the name jobs use.
ALLOWED=(--allowed-hosts "${REACH},${REACH}:${PORT},localhost,localhost:${PORT},127.0.0.1,127.0.0.1:${PORT}")
echo "$URI" >"$STORE/tracking_uri"
echo "MLflow server: store $STORE, listening on $HOST:$PORT"
echo "for the jobs:  export MLFLOW_TRACKING_URI=$URI"
# No scheduled-job executor (MLflow 3): not needed, and it costs memory and start-up time.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec "$MLFLOW" server \
  --backend-store-uri "sqlite:///$STORE/mlflow.db" \
  --artifacts-destination "$STORE/artifacts" --serve-artifacts \
  --host "$HOST" --port "$PORT" --workers "$WORKERS" "${ALLOWED[@]}"
