#!/bin/bash
# Submit lightning-sde jobs with the site's settings (slurm/site.env), from any directory: run directories, results
# and logs land under the directory you submit from (outputs/...; logs in outputs/slurm-logs, or $LSDE_LOGS).
#
#   slurm/submit.sh train [SBATCH_OPTION ...] OVERRIDE ...          lsde-train (slurm/train.sbatch)
#   slurm/submit.sh bench [--tasks=N] [--throttle=K] [SBATCH_OPTION ...] OVERRIDE ...
#                                                                     lsde-bench as an array sized from the sweep
#   slurm/submit.sh pipeline --train "OVERRIDES" --bench "OVERRIDES" [--run NAME] [--tasks N] [--throttle K]
#                    [--train-sbatch "OPTIONS"] [--bench-sbatch "OPTIONS"]
#                                                                     train -> bench of its checkpoint -> report
#
# Arguments starting with -- are sbatch options, as --name=value (they override the template's #SBATCH defaults and
# the site file); the others are Hydra overrides. The bench array has one task per cell (at most --tasks, --throttle at once).
# The pipeline's jobs are chained with --dependency=afterok: a failed or interrupted step stops the ones after it.
set -euo pipefail
# Arrays expand as ${a[@]+"${a[@]}"}: under set -u, bash before 4.4 (CentOS 7) calls an empty "${a[@]}" unbound.

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"
lsde_load_site
LOGS=${LSDE_LOGS:-$PWD/outputs/slurm-logs}
case "$LOGS" in /*) ;; *) LOGS=$PWD/$LOGS ;; esac  # made once every check passed (make_logs)

die() { echo "submit.sh: error: $*" >&2; exit 2; }
# Submitted from inside a job (an array task's script): that job's SLURM variables and run name are its own, not the
# new job's (its array id named the new job's run, and the new job's requeue requeued that job). sbatch's own input
# variables stay.
if [ -n "${SLURM_JOB_ID:-}" ]; then
    [ "${LSDE_RUN_NAME_JOB:-}" = "$SLURM_JOB_ID" ] && unset LSDE_RUN_NAME LSDE_RUN_NAME_JOB
    for var in ${!SLURM_@}; do
        case $var in
            SLURM_CONF | SLURM_CLUSTERS | SLURM_DEBUG_FLAGS | SLURM_EXIT_ERROR | SLURM_HINT | SLURM_UMASK) ;;
            SLURM_STEP_KILLED_MSG_NODE_ID) ;;
            *) unset "$var" ;;
        esac
    done
fi
lsde_words "${LSDE_SBATCH_EXTRA:-}" || die "LSDE_SBATCH_EXTRA (the site file): an unmatched quote (above)"
[ -z "${LSDE_RUN_NAME:-}" ] || echo "submit.sh: note: LSDE_RUN_NAME=$LSDE_RUN_NAME is set here: it names the run of" \
    "every job submitted (not the job id); unset it to key each job's run on its id" >&2

# words OPTION STRING: STRING (an option's value) split as a command line, into LSDE_WORDS.
words() { lsde_words "$2" || die "$1: an unmatched quote in '$2'"; }

# An option's value, checked: `value OPTION "$@"` after the option (so $2 is its value).
value() { [ $# -ge 2 ] || die "$1 needs a value"; }
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be an integer >= 1; got '$2'"; }

# The time limit the last --time among sbatch options OPTIONS... sets (--time=T, --time T, -t T, -tT), if any.
time_option() {
    local opt prev="" found=""
    for opt in "$@"; do
        case "$prev" in --time|-t) found=$opt ;; esac
        case "$opt" in --time=*) found=${opt#--time=} ;; -t?*) found=${opt#-t} ;; esac
        prev=$opt
    done
    echo "$found"
}

# check_time TEMPLATE SBATCH_OPTIONS...: a time limit (the site's flags', then the options') that does not outlast
# the template's time-limit signal (#SBATCH --signal=...@<seconds before the end>) would signal the job as it
# starts; refused.
check_time() {
    local template=$1 lead given seconds site=()
    shift
    mapfile -t site < <(lsde_site_flags)
    given=$(time_option ${site[@]+"${site[@]}"} "$@")
    [ -n "$given" ] || return 0
    lead=$(sed -n 's/^#SBATCH --signal=[^@]*@\([0-9]*\).*/\1/p' "$LSDE_SLURM_DIR/$template" | head -n1)
    seconds=$(lsde_time_seconds "$given") || return 0   # another form: sbatch judges it
    [ -z "$lead" ] || [ "$seconds" -gt "$((lead + 60))" ] || die "--time=$given leaves no time before $template's" \
        "time-limit signal, sent $lead s before the end: give at least $((lead / 60 + 2)) minutes"
}

# The Python of the login node, for sizing the bench array (the same rule as in a job).
login_python() {
    if [ -n "${LSDE_PYTHON:-}" ]; then echo "$LSDE_PYTHON"
    elif [ -x "$LSDE_CLONE/.venv/bin/python" ]; then echo "$LSDE_CLONE/.venv/bin/python"
    else echo python; fi
}

make_logs() {
    mkdir -p "$LOGS" && LOGS=$(cd "$LOGS" && pwd) || die "cannot create the log folder $LOGS${LSDE_LOGS:+ (LSDE_LOGS)}"
}

# sbatch with the site's flags, this directory as the job's, an absolute log path; prints the job id.
submit() {  # submit LOG_PATTERN TEMPLATE SBATCH_OPTIONS... -- ARGS...
    local log=$1 template=$2
    shift 2
    local options=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do options+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    local site=()
    mapfile -t site < <(lsde_site_flags)
    sbatch --parsable ${site[@]+"${site[@]}"} --chdir="$PWD" --output="$LOGS/$log.out" \
        --export="ALL,LSDE_SLURM_DIR=$LSDE_SLURM_DIR" ${options[@]+"${options[@]}"} "$LSDE_SLURM_DIR/$template" "$@" \
        | cut -d';' -f1
}

# bench_array TASKS THROTTLE [--existing] OVERRIDES...: sets ARRAY, the --array option for the sweep (one task per
# cell, capped), and SHARD, the shard.count override of its size: a later --array=<i> (one task rerun) keeps task i's
# cells (SLURM_ARRAY_TASK_COUNT would be 1 there). --existing: the checkpoint must be there now, and is checked.
bench_array() {
    local tasks=$1 throttle=$2
    shift 2
    local cells
    lsde_check_python "$(login_python)" || exit 2
    cells=$("$(login_python)" -m lightning_sde.cli.bench cells "$@") || die "the sweep's config is not valid (above)"
    [ "$cells" -ge 1 ] || die "the sweep has no cells"
    local n=$cells
    if [ -n "$tasks" ] && [ "$tasks" -lt "$n" ]; then n=$tasks; fi
    ARRAY="--array=0-$((n - 1))${throttle:+%$throttle}"
    SHARD="shard.count=$n"
    echo "[lsde] the sweep has $cells cells: $n array tasks${throttle:+, at most $throttle at once}" >&2
}

# has_dependency SBATCH_OPTIONS...: whether the job waits for another (--dependency=...), whose outputs it may read.
has_dependency() {
    local opt
    for opt in "$@"; do [[ $opt == --dependency=* ]] && return 0; done
    return 1
}

# check_train "SBATCH_OPTIONS" OVERRIDES...: the training job's command line checked here, as the job checks it
# before it reads data (lsde-train check), with the trainer train.sbatch gives it: a typo or a missing checkpoint
# fails now, not after the wait in the queue; under a --dependency the checkpoints may be the earlier job's to write.
check_train() {
    local options=$1 planned="" trainer=${LSDE_TRAINER:-ddp}
    shift
    has_dependency $options && planned=--planned
    [[ $options =~ --export=[^\ ]*LSDE_TRAINER=([A-Za-z0-9_]+) ]] && trainer=${BASH_REMATCH[1]}
    lsde_check_python "$(login_python)" || exit 2
    "$(login_python)" -m lightning_sde.cli.train check $planned "trainer=$trainer" "$@" >/dev/null \
        || die "the training config is not valid (above)"
}

split_args() {  # sets SBATCH_OPTS and OVERRIDES from the arguments
    SBATCH_OPTS=() OVERRIDES=()
    local arg
    for arg in "$@"; do
        if [[ $arg == --* ]]; then SBATCH_OPTS+=("$arg")
        elif [[ $arg == -* ]]; then die "$arg: give sbatch options in their long form, with '=' (--time=2:00:00, not" \
            "-t 2:00:00)"
        elif [[ $arg == *=* || $arg == '~'* ]]; then OVERRIDES+=("$arg")
        else die "'$arg' is neither an sbatch option (--name=value) nor a Hydra override (key=value): an sbatch" \
            "option takes its value after '=' (--time=2:00:00, not --time 2:00:00)"
        fi
    done
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
train)
    split_args "$@"
    check_time train.sbatch ${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"}
    check_train "${SBATCH_OPTS[*]-}" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
    make_logs
    job=$(submit "%x-%j" train.sbatch ${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"} -- ${OVERRIDES[@]+"${OVERRIDES[@]}"})
    echo "train job $job: log $LOGS/lsde-train-$job.out; run directory $PWD/outputs/train/<run_name> (the job id" \
         "unless run_name= is given)"
    ;;
bench)
    tasks="" throttle="" rest=()
    while [ $# -gt 0 ]; do  # anywhere among the arguments: sbatch would take --tasks=N for its own --ntasks
        case "$1" in
        --tasks) value "$@"; positive "$@"; tasks=$2; shift 2 ;;
        --throttle) value "$@"; positive "$@"; throttle=$2; shift 2 ;;
        --tasks=* | --throttle=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # the --name=value form
        *) rest+=("$1"); shift ;;
        esac
    done
    split_args ${rest[@]+"${rest[@]}"}
    check_time bench.sbatch ${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"}
    existing=--existing  # the checkpoint must be there, unless the array waits for a job (the one that writes it)
    has_dependency ${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"} && existing=""
    bench_array "$tasks" "$throttle" $existing ${OVERRIDES[@]+"${OVERRIDES[@]}"}
    make_logs
    job=$(submit "%x-%A_%a" bench.sbatch "$ARRAY" ${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"} -- "$SHARD" \
        ${OVERRIDES[@]+"${OVERRIDES[@]}"})
    echo "bench array $job: logs $LOGS/lsde-bench-${job}_<task>.out; when every task is done:" \
         "sbatch $LSDE_SLURM_DIR/report.sbatch [--no-wandb] <results> (or lsde-bench report <results> --wandb)," \
         "<results> being $PWD/outputs/bench/<name>/results.jsonl unless results= or paths.root= says otherwise"
    ;;
pipeline)
    train="" bench="" run="" tasks="" throttle="" train_sbatch="" bench_sbatch=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --train) value "$@"; train=$2; shift 2 ;;
        --bench) value "$@"; bench=$2; shift 2 ;;
        --run) value "$@"; run=$2; shift 2 ;;
        --tasks) value "$@"; positive "$@"; tasks=$2; shift 2 ;;
        --throttle) value "$@"; positive "$@"; throttle=$2; shift 2 ;;
        --train-sbatch) value "$@"; train_sbatch=$2; shift 2 ;;
        --bench-sbatch) value "$@"; bench_sbatch=$2; shift 2 ;;
        --train=* | --bench=* | --run=* | --tasks=* | --throttle=* | --train-sbatch=* | --bench-sbatch=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # the --name=value form
        *) die "unknown pipeline option $1 (see the top of $0)" ;;
        esac
    done
    [ -n "$bench" ] || die "pipeline needs --bench \"OVERRIDES\" (at least data=<the training data>)"
    run=${run:-pipeline-$(date +%Y%m%d-%H%M%S)}
    [[ $run =~ ^[A-Za-z0-9._+@-]+$ && ${run//./} ]] || die "--run may hold ASCII letters, digits and . _ - + @ only" \
        "(it names the run directory and the W&B run's id, as lsde-train's run_name); got '$run'"
    run_dir=$PWD/outputs/train/$run
    results=$PWD/outputs/bench/$run/results.jsonl
    # each split into words by lsde_words (quotes kept whole): 'nfe=[10, 20]' stays one override
    words --train "$train"; train_args=(${LSDE_WORDS[@]+"${LSDE_WORDS[@]}"})
    words --bench "$bench"; bench_args=(${LSDE_WORDS[@]+"${LSDE_WORDS[@]}"})
    words --train-sbatch "$train_sbatch"; train_opts=(${LSDE_WORDS[@]+"${LSDE_WORDS[@]}"})
    words --bench-sbatch "$bench_sbatch"; bench_opts=(${LSDE_WORDS[@]+"${LSDE_WORDS[@]}"})
    check_time train.sbatch ${train_opts[@]+"${train_opts[@]}"}
    check_time bench.sbatch ${bench_opts[@]+"${bench_opts[@]}"}
    bench_args=("checkpoint=$run_dir/checkpoints/last.ckpt" "name=$run" "results=$results" ${bench_args[@]+"${bench_args[@]}"})
    check_train "${train_opts[*]-}" ${train_args[@]+"${train_args[@]}"} "run_name=$run" "run_dir=$run_dir"
    bench_array "$tasks" "$throttle" ${bench_args[@]+"${bench_args[@]}"}
    make_logs
    train_job=$(submit "%x-%j" train.sbatch ${train_opts[@]+"${train_opts[@]}"} -- \
        ${train_args[@]+"${train_args[@]}"} "run_name=$run" "run_dir=$run_dir")
    bench_job=$(submit "%x-%A_%a" bench.sbatch "$ARRAY" "--dependency=afterok:$train_job" \
        ${bench_opts[@]+"${bench_opts[@]}"} -- "$SHARD" ${bench_args[@]+"${bench_args[@]}"}) \
        || { scancel "$train_job" || true; die "the bench array was not submitted (above): train job $train_job cancelled"; }
    report_args=("$results")
    for arg in ${bench_args[@]+"${bench_args[@]}"}; do  # the sweep's W&B settings are the report's (it logs the run)
        case $arg in
        wandb.project=* | +wandb.project=* | ++wandb.project=*) report_args+=(--project "${arg#*wandb.project=}") ;;
        wandb.enabled=[Ff]alse | ++wandb.enabled=[Ff]alse)  # the views only
            report_args=(--no-wandb ${report_args[@]+"${report_args[@]}"}) ;;
        esac
    done
    report_job=$(submit "%x-%j" report.sbatch "--dependency=afterok:$bench_job" -- \
        ${report_args[@]+"${report_args[@]}"}) || { scancel "$train_job" "$bench_job" || true; die "the report was not submitted (above): jobs $train_job and" \
             "$bench_job cancelled"; }
    cat <<EOF
pipeline $run: train $train_job -> bench array $bench_job -> report $report_job (each after the previous one succeeded)
  run directory: $run_dir
  results:       $results  (views next to it when the report is done)
  logs:          $LOGS/lsde-{train-$train_job,bench-${bench_job}_<task>,report-$report_job}.out
  W&B (offline on the compute nodes): the report's log ends with the 'wandb sync' command for the login node
  watch: squeue --me; sacct -j $train_job,$bench_job,$report_job --format=JobID,JobName,State,Elapsed
EOF
    ;;
*)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$command" ] || [ "$command" = "-h" ] || [ "$command" = "--help" ] || exit 2
    ;;
esac
