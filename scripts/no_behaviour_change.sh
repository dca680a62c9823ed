#!/usr/bin/env bash
# The runs that check a change which must not change behaviour: run this script on the code
# before the change and on the code after it, on one machine, then compare the two folders:
#
#   bash scripts/no_behaviour_change.sh OUT/before     # on the old commit
#   bash scripts/no_behaviour_change.sh OUT/after      # on the new one
#   python scripts/compare_runs.py OUT/before OUT/after
#
# One intra-op thread, so that CPU kernels split their sums alike in both. A run already
# finished in OUT is not trained again (the trainer resumes it).
set -euo pipefail
out=${1:?usage: scripts/no_behaviour_change.sh OUT}
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

train() {  # NAME OVERRIDES...
  local name=$1
  shift
  echo "== $name"
  "$python" train.py "$@" trainer.progress_bar=false hydra.run.dir="$out/$name" >"$out/$name.log" 2>&1 \
    || { tail -20 "$out/$name.log"; exit 1; }
}

mkdir -p "$out"
for optimizer in sgd sam ssam_f ssam_d; do
  train "$optimizer" experiment=fmnist_cpu optimizer=$optimizer sparsity=0.5 seed=0
done
# fmnist_noisy as it tested when these runs were first made: 2,000 test images, every epoch.
noisy=(experiment=fmnist_noisy epochs=3 seed=0 dataset.test_size=2000 trainer.test_every_epoch=true)
train late_phase_sam "${noisy[@]}" optimizer=sam optimizer.sam_from=0.5
train sam_m32 "${noisy[@]}" optimizer=sam optimizer.m=32
train ssam_f_accumulate3 "${noisy[@]}" optimizer=ssam_f trainer.accumulate_steps=3
train ssam_f_tensor_ascent0.25 "${noisy[@]}" optimizer=ssam_f optimizer.granularity=tensor \
  optimizer.ascent_fraction=0.25
echo "== ssam_f_gloo2"
"$python" -m torch.distributed.run --standalone --nproc_per_node=2 train.py experiment=fmnist_cpu \
  optimizer=ssam_f sparsity=0.5 seed=0 device=cpu trainer.progress_bar=false \
  hydra.run.dir="$out/ssam_f_gloo2" >"$out/ssam_f_gloo2.log" 2>&1 || { tail -20 "$out/ssam_f_gloo2.log"; exit 1; }
