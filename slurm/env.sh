# Set-up shared by the sbatch templates and slurm/submit.sh (sourced, not run): it defines functions and exports
# variables, and changes no shell option of the caller. `lsde_env` returns non-zero (with a message) on an error.

# This clone: env.sh is always sourced from its own path, so the clone is found wherever the job was submitted from.
LSDE_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LSDE_CLONE=$(dirname "$LSDE_SLURM_DIR")
export LSDE_SLURM_DIR LSDE_CLONE

# The site file: $LSDE_SITE_ENV, else slurm/site.env in this clone (see site.env.example); exported as read.
lsde_load_site() {
    local site=${LSDE_SITE_ENV:-$LSDE_SLURM_DIR/site.env}
    if [ -n "${LSDE_SITE_ENV:-}" ] && [ ! -f "$LSDE_SITE_ENV" ]; then
        echo "error: LSDE_SITE_ENV=$LSDE_SITE_ENV is not a file" >&2
        return 2
    fi
    if [ -f "$site" ]; then
        set -a
        # shellcheck disable=SC1090
        source "$site"
        set +a
        export LSDE_SITE_ENV=$site
    fi
}

# The sbatch flags the site file asks for, one per line (empty settings are left out).
lsde_site_flags() {
    [ -n "${LSDE_ACCOUNT:-}" ] && echo "--account=$LSDE_ACCOUNT"
    [ -n "${LSDE_PARTITION:-}" ] && echo "--partition=$LSDE_PARTITION"
    [ -n "${LSDE_QOS:-}" ] && echo "--qos=$LSDE_QOS"
    [ -n "${LSDE_MEM:-}" ] && echo "--mem=$LSDE_MEM"
    [ -n "${LSDE_CONSTRAINT:-}" ] && echo "--constraint=$LSDE_CONSTRAINT"
    [ -n "${LSDE_MAIL_TYPE:-}" ] && echo "--mail-type=$LSDE_MAIL_TYPE"
    [ -n "${LSDE_MAIL_USER:-}" ] && echo "--mail-user=$LSDE_MAIL_USER"
    if [ -n "${LSDE_SBATCH_EXTRA:-}" ] && lsde_words "$LSDE_SBATCH_EXTRA"; then
        local flag
        for flag in ${LSDE_WORDS[@]+"${LSDE_WORDS[@]}"}; do echo "$flag"; done
    fi
    return 0
}

# lsde_words STRING: STRING's words, split by xargs's rules (blanks separate words; '...' or "..." keep one whole; a
# backslash outside quotes keeps the next character; nothing expanded or run), into the array LSDE_WORDS; non-zero,
# with xargs's message, for an unmatched quote.
lsde_words() {
    LSDE_WORDS=()
    [[ $1 =~ ^[[:space:]]*$ ]] && return 0
    printf '%s' "$1" | xargs printf '%s\0' > /dev/null || return 1
    local word
    while IFS= read -r -d '' word; do LSDE_WORDS+=("$word"); done < <(printf '%s' "$1" | xargs printf '%s\0')
}

# Whether Python $1 can run the apps: lightning_sde and what it needs are there (a clone's root finds the package in the
# working directory even without its dependencies). Found, not imported: importing them costs seconds (tens on a
# shared file system) at every submission and job start, and the app imports them next anyway. Returns non-zero with
# the message otherwise; a Python already found good in this shell is not asked again.
lsde_check_python() {
    [ "${LSDE_PYTHON_FOUND_GOOD:-}" = "$1" ] && return 0
    if ! "$1" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('torch', 'lightning', 'hydra', 'lightning_sde')))" 2>/dev/null; then
        echo "error: $1 cannot import lightning_sde and its dependencies (torch, lightning, hydra); run" \
             "'make .venv/.installed' in $LSDE_CLONE on the login node, or set LSDE_PYTHON / LSDE_SETUP in the site" \
             "file (slurm/site.env.example)" >&2
        return 2
    fi
    LSDE_PYTHON_FOUND_GOOD=$1
}

# Seconds of an sbatch --time value (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); fails on another form.
lsde_time_seconds() {
    local d=0 h=0 m=0 s=0
    if [[ $1 =~ ^([0-9]+)-([0-9]+)(:([0-9]+))?(:([0-9]+))?$ ]]; then
        d=${BASH_REMATCH[1]} h=${BASH_REMATCH[2]} m=${BASH_REMATCH[4]:-0} s=${BASH_REMATCH[6]:-0}
    elif [[ $1 =~ ^([0-9]+):([0-9]+):([0-9]+)$ ]]; then
        h=${BASH_REMATCH[1]} m=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]}
    elif [[ $1 =~ ^([0-9]+):([0-9]+)$ ]]; then
        m=${BASH_REMATCH[1]} s=${BASH_REMATCH[2]}
    elif [[ $1 =~ ^([0-9]+)$ ]]; then
        m=${BASH_REMATCH[1]}
    else
        return 1
    fi
    echo $(( ((10#$d * 24 + 10#$h) * 60 + 10#$m) * 60 + 10#$s ))
}

# Inside a job: the site's set-up commands, the Python, the run name and the environment of a compute node.
lsde_env() {
    lsde_load_site || return
    if [ -n "${LSDE_SETUP:-}" ]; then
        echo "[lsde] site set-up: $LSDE_SETUP"
        eval "$LSDE_SETUP" || { echo "error: the site set-up (LSDE_SETUP in $LSDE_SITE_ENV) failed" >&2; return 2; }
    fi
    if [ -z "${LSDE_PYTHON:-}" ]; then
        if [ -x "$LSDE_CLONE/.venv/bin/python" ]; then LSDE_PYTHON=$LSDE_CLONE/.venv/bin/python; else LSDE_PYTHON=python; fi
    fi
    export LSDE_PYTHON
    lsde_check_python "$LSDE_PYTHON" || return
    # Run directory keyed on the job id: a requeued job finds its own checkpoint (array tasks: <array job>_<task>).
    # LSDE_RUN_NAME_IS_JOB_ID=1: the name is the job's by default (lsde-train refuses a second run of one job on it)
    if [ -n "${LSDE_RUN_NAME:-}" ]; then
        export LSDE_RUN_NAME_IS_JOB_ID=0
    elif [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
        export LSDE_RUN_NAME=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} LSDE_RUN_NAME_IS_JOB_ID=1
    else
        export LSDE_RUN_NAME=${SLURM_JOB_ID:-local} LSDE_RUN_NAME_IS_JOB_ID=1
    fi
    export LSDE_RUN_NAME_JOB=${SLURM_JOB_ID:-}  # whose run it names: a job submitted from this one does not take it
    # Compute nodes have no internet: W&B writes offline runs (synced later, see slurm/README.md), and everything
    # downloaded was fetched on the login node by `lsde-prepare` (datasets, Inception weights, FID statistics).
    export WANDB_MODE=${WANDB_MODE:-offline}
    unset WANDB_SERVICE   # a W&B service of the submitting process (a notebook, a test) is not the job's: it starts its own
    export TORCH_HOME=${TORCH_HOME:-$HOME/.cache/torch}
    export LSDE_CACHE=${LSDE_CACHE:-${LSDE_OUTPUTS:-$PWD/outputs}/cache}   # lsde-prepare's default too
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=1          # a dead rank fails the job instead of hanging it
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}              # set NCCL_SOCKET_IFNAME / NCCL_IB_HCA in the site file if needed
    export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
    # processes per node = tasks per node (one per GPU); srun starts them, Lightning reads SLURM's variables
    export LSDE_NODES=${SLURM_NNODES:-1}
    export LSDE_TASKS_PER_NODE=$(( ${SLURM_NTASKS:-1} / ${SLURM_NNODES:-1} ))
    echo "[lsde] job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-?}:" \
         "$LSDE_NODES node(s) x $LSDE_TASKS_PER_NODE task(s), run $LSDE_RUN_NAME, in $PWD, $(date -Is)"
}
