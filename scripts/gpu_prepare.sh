#!/usr/bin/env bash
# Run here, on a machine with the package registries, before scripts/gpu_check.sh or gpu_bench.sh run on a GPU
# machine that has torch but no network: puts the wheels the trainer needs beyond torch (Hydra and
# OmegaConf, for Python 3.12) in .whl/ and the Fashion-MNIST gzip files in .device/fashion-mnist/,
# both ignored by git, to be carried along with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl .device/fashion-mnist
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
# Hydra's parser runtime is published as a source archive only; it is pure Python, so a wheel
# built here installs anywhere.
$PY -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
FASHION_MNIST=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
cp "$FASHION_MNIST"/*-ubyte.gz .device/fashion-mnist/
ls -l .whl .device/fashion-mnist
