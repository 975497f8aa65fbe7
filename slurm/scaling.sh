#!/usr/bin/env bash
#SBATCH --job-name=crysbench-scaling
#SBATCH --output=%x-%A_%a.out
#SBATCH --time=01:00:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
# Scaling-law sweep with plain sbatch: `sbatch slurm/scaling.sh` (or `bash slurm/scaling.sh`).
#
# The same script plays three roles, chosen by its environment:
#   driver (no SLURM_ARRAY_TASK_ID): plans the sweep, submits itself as an array over the unfinished
#     points (`sbatch --array`), then a dependent fit/report job (`--dependency=afterok`);
#   array task: trains point $SLURM_ARRAY_TASK_ID of the plan with `srun` (DDP when ntasks > 1);
#   fit (CRYSBENCH_ROLE=fit): fits the power law and writes results.
# Settings (environment): AXIS=data|params|compute, MODEL=cgcnn, PRESET=quick|full, PLAN=sweeps/<name>,
#   CRYSBENCH_SWEEP_ARGS (more `sweep` flags), CRYSBENCH_FIT_ARGS (more `fit` flags), SBATCH_ARGS (site flags for the array, e.g.
#   "--partition=gpu --account=abc --gres=gpu:1"; they pass through untouched), PYTHON.
set -euo pipefail
PYTHON=${PYTHON:-python3}
AXIS=${AXIS:-data}
MODEL=${MODEL:-cgcnn}
PRESET=${PRESET:-quick}
PLAN=${PLAN:-sweeps/${MODEL}-${AXIS}-${PRESET}}
SELF=${CRYSBENCH_SCRIPT:-$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')}
[ -n "$SELF" ] && [ -f "$SELF" ] || SELF=$(readlink -f "$0")

if [ "${CRYSBENCH_ROLE:-}" = fit ]; then
  exec "$PYTHON" -m crysbench fit "$PLAN" ${CRYSBENCH_FIT_ARGS:-}
fi

if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  export CRYSBENCH_LOG="${SLURM_SUBMIT_DIR:-.}/crysbench-scaling-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out"
  export MASTER_PORT=$((29500 + ${SLURM_JOB_ID:-0} % 1000))
  exec srun --kill-on-bad-exit=1 "$PYTHON" -m crysbench sweep-task "$PLAN" "$SLURM_ARRAY_TASK_ID"
fi

# driver: plan (idempotent: finished points are kept), then submit what is left
"$PYTHON" -m crysbench sweep --axis "$AXIS" --model "$MODEL" --preset "$PRESET" --out "$PLAN" \
  --launcher none ${CRYSBENCH_SWEEP_ARGS:-}
TODO=$("$PYTHON" -m crysbench sweep status "$PLAN" --pending)
if [ -z "$TODO" ]; then
  echo "all points of $PLAN are done; fitting"
  CRYSBENCH_ROLE=fit exec bash "$SELF"
fi
ARRAY=$(sbatch --parsable --array="$TODO" --export=ALL,PLAN="$PLAN",CRYSBENCH_SCRIPT="$SELF" \
  ${SBATCH_ARGS:-} "$SELF")
FIT=$(sbatch --parsable --dependency=afterok:"${ARRAY%%;*}" --job-name=crysbench-fit \
  --output=crysbench-fit-%j.out --export=ALL,PLAN="$PLAN",CRYSBENCH_ROLE=fit "$SELF")
echo "plan $PLAN: array job ${ARRAY%%;*} (tasks $TODO), fit job $FIT"
