#!/usr/bin/env bash
# The oldest torch pyproject.toml allows, tested: installs that torch and its torchvision into a
# venv of its own (.venv-floor, ignored by git), with the package, and runs the fast test tier
# there. Not part of `make test`. From PyPI, torch comes with its CUDA libraries (several GB);
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu should get the CPU-only wheels instead
# (untested: docs/benchmarks.md's run had no access to that index).
#
#   bash scripts/check_torch_floor.sh
#
# tests/test_torch_floor.py checks that these versions are pyproject.toml's lower bounds.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_FLOOR=2.6.0
TORCHVISION_FLOOR=0.21.0
venv=.venv-floor
pins="torch==$TORCH_FLOOR torchvision==$TORCHVISION_FLOOR"

# make reinstalls when pyproject.toml changes; a floor moved here must reinstall too.
installed=$("$venv/bin/python" -c 'from importlib.metadata import version
print(*(version(name).split("+")[0] for name in ("torch", "torchvision")))' 2>/dev/null || true)
if [ "$installed" != "$TORCH_FLOOR $TORCHVISION_FLOOR" ]; then
  rm -f "$venv/.installed"
fi

start=$SECONDS
make --no-print-directory "$venv/.installed" VENV="$venv" TORCH_PINS="$pins"
echo "== set-up: $((SECONDS - start)) s ($pins)"
start=$SECONDS
status=0
make --no-print-directory test-fast VENV="$venv" TORCH_PINS="$pins" || status=$?
echo "== make test-fast on $pins: $((SECONDS - start)) s, exit code $status"
exit $status
