#!/usr/bin/env bash
# The accuracy of the fast Sparse SAM variants on Fashion-MNIST: SGD, SAM, the
# paper's element-wise SSAM-F and the tensor-granular, cost-aware SSAM-F (norm masked, which is
# what lets its ascent skip gradients) at sparsity 0.5 and 0.9, three seeds each, with the
# fmnist_cpu preset (10k training images, 3 epochs). Then the tables.
#   bash scripts/sweep_fast_variants.sh            # about 15 minutes on a 2-core CPU
#   bash scripts/sweep_fast_variants.sh resume=false   # extra settings go to every run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMMON=(experiment=fmnist_cpu experiment_name=fmnist_fast_variants seed=0,1,2 trainer.progress_bar=false "$@")
$PY train.py -m "${COMMON[@]}" optimizer=sgd,sam
$PY train.py -m "${COMMON[@]}" optimizer=ssam_f sparsity=0.5,0.9
$PY train.py -m "${COMMON[@]}" optimizer=ssam_f sparsity=0.5,0.9 optimizer.granularity=tensor optimizer.norm=masked
$PY scripts/tables.py outputs/sweeps/fmnist_fast_variants \
    --markdown docs/fmnist_fast_variants_table.md --csv docs/fmnist_fast_variants_table.csv
