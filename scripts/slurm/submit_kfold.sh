#!/bin/bash
# Submit k-fold CV as a SLURM array (one fold per task) plus a blend job that starts once every
# fold succeeded. Run from the repository root:
#
#   bash scripts/slurm/submit_kfold.sh                       # 5 folds of configs/default.yaml
#   NSPLITS=10 RUN=roberta10 CONFIG=my.yaml bash scripts/slurm/submit_kfold.sh backbone.name=roberta-base
#
# Extra arguments are passed to scripts/train.py as overrides. To re-run only some folds:
#   RUN=roberta10 NSPLITS=10 sbatch --array=3,7 scripts/slurm/kfold_array.sbatch
# then: RUN=roberta10 sbatch scripts/slurm/blend.sbatch
set -euo pipefail
export CONFIG=${CONFIG:-configs/default.yaml} RUN=${RUN:-kfold} NSPLITS=${NSPLITS:-5}
mkdir -p logs
array=$(sbatch --parsable --array=0-$((NSPLITS - 1)) scripts/slurm/kfold_array.sbatch "$@")
array=${array%%;*}   # "jobid;cluster" on federated clusters
# afterok: blend once all array tasks completed successfully (a requeued task counts when it
# finally succeeds). Use afterany to blend whatever finished; blend.py names missing folds.
blend=$(sbatch --parsable --dependency=afterok:"$array" scripts/slurm/blend.sbatch)
echo "folds: job $array (array 0-$((NSPLITS - 1))); blend: job ${blend%%;*} -> checkpoints/$RUN"
