# Sourced by scripts/gpu_bench.sh and scripts/gpu_check.sh, from the repository root: $PY, a Python
# with torch (default python3), given Hydra and OmegaConf from the wheels scripts/gpu_prepare.sh put
# in .whl/ when it lacks them, with the repository on its path; and card_name.
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/ssam-site .whl/*.whl
    export PYTHONPATH=/tmp/ssam-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

# The GPU's name, fit for a folder's: results/gpu_<card name>/.
card_name() {
    nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_'
}
