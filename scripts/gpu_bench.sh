#!/usr/bin/env bash
# One prepared GPU check for the fast Sparse SAM variants, under 8 minutes on one H100/H200:
#   1. the step benchmark (scripts/bench_step.py: CIFAR ResNet-18, batch 128, SGD, SAM, SSAM-F and
#      SSAM-D at s = 0.5, 0.9, 0.99, element-wise and tensor-granular) in fp32, then in bf16 with
#      channels-last;
#   2. the fast-variants accuracy table on Fashion-MNIST (all 60,000 images, ResNet-18, 3 epochs,
#      data on the GPU): SGD, SAM, element-wise SSAM-F and tensor-granular SSAM-F (norm masked) at
#      s = 0.5 and 0.9, seeds 0, 1, 2; the three seeds run side by side on the one GPU, to fit
#      the time, so the table's time-per-epoch column measures shared use: the step benchmark
#      is the speed measurement.
# Everything lands in $RESULTS (default results/gpu_<card name>), eight files at most.
#
#   bash scripts/gpu_prepare.sh       # here first, with the network: wheels and data, git-ignored
#   bash scripts/gpu_bench.sh         # on the GPU machine, from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/ssam-site .whl/*.whl
    export PYTHONPATH=/tmp/ssam-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
DATA=${DATA:-$PWD/.device/fashion-mnist}
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_')
RESULTS=${RESULTS:-results/gpu_$CARD}
mkdir -p "$RESULTS"
nvidia-smi > "$RESULTS/nvidia-smi.txt"

BENCH=(scripts/bench_step.py --device cuda --batch-size 128 --warmup 5 --repeats 20)
$PY "${BENCH[@]}" --json "$RESULTS/bench_step_fp32.json" | tee "$RESULTS/bench_step_fp32.md"
$PY "${BENCH[@]}" --amp bf16 --channels-last --json "$RESULTS/bench_step_bf16.json" \
    | tee "$RESULTS/bench_step_bf16.md"

COMMON=(experiment=fmnist_gpu experiment_name=fmnist_fast_variants_gpu epochs=3 "dataset.root=$DATA"
    dataset.on_device=true trainer.num_workers=0 trainer.progress_bar=false)
for seed in 0 1 2; do
    (
        $PY train.py -m "${COMMON[@]}" seed=$seed optimizer=sgd,sam
        $PY train.py -m "${COMMON[@]}" seed=$seed optimizer=ssam_f sparsity=0.5,0.9
        $PY train.py -m "${COMMON[@]}" seed=$seed optimizer=ssam_f sparsity=0.5,0.9 \
            optimizer.granularity=tensor optimizer.norm=masked
    ) > "$RESULTS/sweep_seed$seed.log" 2>&1 &
done
wait
cat "$RESULTS"/sweep_seed*.log > "$RESULTS/sweep.log" && rm "$RESULTS"/sweep_seed*.log
$PY scripts/tables.py outputs/sweeps/fmnist_fast_variants_gpu \
    --markdown "$RESULTS/fmnist_fast_variants_table.md" --csv "$RESULTS/fmnist_fast_variants_table.csv"
