# Set-up shared by the sbatch templates (sourced, not run). Override any of these with `sbatch --export=ALL,VAR=...`.
set -euo pipefail
REPO=${LSDE_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}     # submit from the clone, or set LSDE_REPO
cd "$REPO"
export LSDE_PYTHON=${LSDE_PYTHON:-$REPO/.venv/bin/python}   # `make .venv/.installed` on the login node
if [ ! -x "$LSDE_PYTHON" ]; then
    echo "error: no Python at LSDE_PYTHON=$LSDE_PYTHON; run 'make .venv/.installed' in $REPO on the login node" >&2
    exit 2
fi
# Run directory keyed on the job id: a requeued job finds its own checkpoint (array tasks: <array job>_<task>).
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    export LSDE_RUN_NAME=${LSDE_RUN_NAME:-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
else
    export LSDE_RUN_NAME=${LSDE_RUN_NAME:-${SLURM_JOB_ID:-local}}
fi
# Compute nodes have no internet: W&B writes offline runs (synced later, see slurm/README.md), and everything
# downloaded was fetched on the login node by `lsde-prepare` (datasets, Inception weights, FID statistics).
export WANDB_MODE=${WANDB_MODE:-offline}
export TORCH_HOME=${TORCH_HOME:-$HOME/.cache/torch}
export LSDE_CACHE=${LSDE_CACHE:-$REPO/outputs/cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1          # a dead rank fails the job instead of hanging it
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}              # set NCCL_SOCKET_IFNAME / NCCL_IB_HCA here if NCCL picks a wrong NIC
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
# processes per node = tasks per node (one per GPU); srun starts them, Lightning reads SLURM's variables
export LSDE_NODES=${SLURM_NNODES:-1}
export LSDE_TASKS_PER_NODE=$(( ${SLURM_NTASKS:-1} / ${SLURM_NNODES:-1} ))
echo "[lsde] job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-?}: $LSDE_NODES node(s) x $LSDE_TASKS_PER_NODE task(s), run $LSDE_RUN_NAME, $(date -Is)"
