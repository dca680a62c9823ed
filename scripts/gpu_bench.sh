#!/usr/bin/env bash
# Prepared GPU benchmarks, in stages named on the command line (default: fast_variants, under 8
# minutes on one H100/H200 by estimate). Run scripts/gpu_check.sh first: it checks the trainer on
# CUDA (determinism, compile, the Fisher pass, the paper's preset) and times the step of SGD, SAM
# and SSAM-F in fp32 and bf16 (the full step table: scripts/bench_step.py --device cuda).
#   1. fast_variants: the fast-variants accuracy table on Fashion-MNIST (all 60,000 images,
#      ResNet-18, 3 epochs, data on the GPU): SGD, SAM, element-wise SSAM-F and tensor-granular
#      SSAM-F (norm masked) at s = 0.5 and 0.9, seeds 0, 1, 2; the three seeds run side by side on
#      the one GPU, to fit the time, so the table's time-per-epoch column measures shared use:
#      the step benchmark (gpu_check.sh's steps) is the speed measurement.
#   2. frontier: the accuracy-vs-cost frontier of scripts/frontier.py at full scale: preset
#      fmnist_noisy (40% label noise) on all 60,000 Fashion-MNIST images (500 held out for
#      validation) and the 10,000 test images, ResNet-18, data on the GPU, bf16 autocast with
#      channels-last; the configurations $FRONTIER_CONFIGS (default: SGD, SAM, the best Sparse SAM
#      of the CPU frontier, each other method at its authors' defaults, and the two Sparse SAM
#      combinations: 12), $FRONTIER_EPOCHS epochs (default 8: SAF's trajectory loss starts at
#      epoch 6), seeds $FRONTIER_SEEDS (default 0 1), 4 runs side by side; then the step costs,
#      measured in one process on the same settings (after the runs: RST's and AE-SAM's share of
#      SAM steps comes from them), and the report. Sized to about 10 minutes on one H100-class
#      GPU by estimate, never run: SGD at about 3 s an epoch, the 12 configurations at about 17
#      SGD epochs per epoch (1 to 2 passes a step), 4 runs sharing the GPU at about twice one's
#      throughput, about 20 s to start each run; fewer configurations if it must fit a hard limit.
#      FLOPs do not depend on the machine: scripts/frontier.py flops, on the CPU.
#   3. memory: peak CUDA memory allocated of SGD, SAM and SSAM-F steps on CIFAR ResNet-18 at batch
#      128 with gradient accumulation k = 1, 2, 4, in the steady state: after a warm-up step that
#      builds SSAM-F's mask (scripts/bench_memory.py; about a minute).
# The results land in $RESULTS (default results/gpu_<card name>): nvidia-smi.txt, and three files
# from fast_variants, five from the frontier, two from memory; run the frontier as a call of its own.
#
#   bash scripts/gpu_prepare.sh       # here first, with the network: wheels and data, git-ignored
#   bash scripts/gpu_bench.sh         # on the GPU machine, from the repository root
#   bash scripts/gpu_bench.sh frontier
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
DATA=${DATA:-$PWD/.device/fashion-mnist}
RESULTS=${RESULTS:-results/gpu_$(card_name)}
mkdir -p "$RESULTS"
nvidia-smi > "$RESULTS/nvidia-smi.txt"
STAGES=" ${*:-fast_variants} "

if [[ $STAGES == *" fast_variants "* ]]; then
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
fi

if [[ $STAGES == *" frontier "* ]]; then
FRONTIER=outputs/frontier/fmnist_noisy_gpu
FULL_SCALE=("dataset.root=$DATA" dataset.train_size=null dataset.test_size=null model=resnet18
    dataset.on_device=true trainer.num_workers=0 trainer.amp=bf16 trainer.channels_last=true)
read -r -a SEEDS <<< "${FRONTIER_SEEDS:-0 1}"
read -r -a CONFIGS <<< "${FRONTIER_CONFIGS:-sgd sam ssam_f_s0.5_masked_norm looksam_k5 rst_p0.25 ae_sam esam \
sam_on msam saf ssam_f_rst_p0.25 ssam_f_looksam_k5}"
$PY scripts/frontier.py train --preset fmnist_noisy --configs "${CONFIGS[@]}" --seeds "${SEEDS[@]}" --jobs 4 \
    --out "$FRONTIER" --set "${FULL_SCALE[@]}" "epochs=${FRONTIER_EPOCHS:-8}" 2>&1 \
    | tee "$RESULTS/frontier_sweep.log" || echo "some runs failed: the report lists them"
$PY scripts/frontier.py bench --preset fmnist_noisy --configs "${CONFIGS[@]}" --out "$FRONTIER" --warmup 5 \
    --repeats 20 --set "${FULL_SCALE[@]}" "epochs=${FRONTIER_EPOCHS:-8}"
cp "$FRONTIER/step_cost.json" "$RESULTS/"
$PY scripts/frontier.py report --out "$FRONTIER" --configs "${CONFIGS[@]}" --csv "$RESULTS/frontier.csv" \
    --figure "$RESULTS/frontier.png" --markdown "$RESULTS/frontier.md"
fi

if [[ $STAGES == *" memory "* ]]; then
$PY scripts/bench_memory.py --device cuda --steps 3 --json "$RESULTS/bench_memory_cuda.json" \
    | tee "$RESULTS/bench_memory_cuda.md"
fi
