#!/usr/bin/env bash
# The first thing to run on a GPU machine: scripts/gpu_check.py's five checks of the trainer on
# CUDA, under 8 minutes on one H100/H200 by estimate (never run there yet); each stage fails soft
# and the exit status is 1 if any did not pass:
#   determinism  two 20-step SAM runs with trainer.deterministic=true: identical weights; and the
#                pair with deterministic=false, for contrast (CIFAR ResNet-18, batch 128);
#   fisher       SSAM-F's Fisher scores by vmap against the batch-1 loop on ResNet-18 and
#                WRN-28-10: equal within 1e-6 in float64; in float32 (128 samples) how far
#                apart, and the time and peak CUDA memory of each;
#   steps        the step benchmark (scripts/bench_step.py) for SGD, SAM and SSAM-F at s = 0.5,
#                fp32, then bf16 with channels-last;
#   preset       python train.py experiment=cifar10_resnet18 optimizer=ssam_f, 2 epochs;
#   compile      trainer.compile=true for 3 epochs of SAM and of tensor-masked SSAM-F against
#                eager: graphs compiled, recompiles, step times.
# The training runs read synthetic CIFAR-10 that the check writes in the real format: no dataset
# is needed. Results: $RESULTS (default results/gpu_check_<card name>), eight small files,
# summary.md first. Work files (data, runs): $WORK (default outputs/gpu_check/<card name>).
#
#   bash scripts/gpu_prepare.sh                  # here first, with the network: the wheels
#   bash scripts/gpu_check.sh                    # on the GPU machine, from the repository root
#   bash scripts/gpu_check.sh --stages fisher    # some stages only (scripts/gpu_check.py --help)
#   bash scripts/gpu_check.sh --device cpu       # every stage at a tiny size, to check the script
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda  # or what --device says; the arguments go on to scripts/gpu_check.py as they are
ARGS=("$@")
for ((i = 0; i + 1 < ${#ARGS[@]}; i++)); do
    if [[ ${ARGS[i]} == --device ]]; then
        DEVICE=${ARGS[i + 1]}
    fi
done
if [[ $DEVICE == cpu && -z ${PY:-} && -x .venv/bin/python ]]; then
    PY=.venv/bin/python  # the development machine's (make setup)
fi
source scripts/gpu_env.sh
CARD=cpu
if [[ $DEVICE == cuda ]]; then
    CARD=$(card_name)
fi
RESULTS=${RESULTS:-results/gpu_check_$CARD}
WORK=${WORK:-outputs/gpu_check/$CARD}
mkdir -p "$RESULTS"
if [[ $DEVICE == cuda ]]; then
    nvidia-smi > "$RESULTS/nvidia-smi.txt"
fi
exec $PY scripts/gpu_check.py all --results "$RESULTS" --work "$WORK" "$@"
