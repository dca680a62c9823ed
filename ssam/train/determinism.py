"""trainer.deterministic: what makes a GPU run repeat itself bit for bit, and what is promised
without it.

On the CPU our runs repeat bit for bit and resume exactly either way (same machine, torch and
thread count). On a GPU they do so only with deterministic kernels: cuDNN's autotuner and
several CUDA kernels (adaptive average pooling's backward, the NLL loss, scatter-adds) sum in an
order that varies from run to run, and TF32 matmuls round differently from float32 ones.

A kernel with no deterministic version warns rather than stops the run (``warn_only``): torch
flags adaptive average pooling's backward on CUDA, which our models' global 1×1 pools need and
which then adds each gradient into its own place, so the order cannot vary. Whether a run repeats
itself is checked, not assumed: scripts/gpu_check.sh compares two runs' weights bit for bit.
"""

from __future__ import annotations

import os

import torch

# cuBLAS needs a fixed workspace to be deterministic (CUDA 10.2 and later); the size torch's
# documentation gives for it.
CUBLAS_WORKSPACE = ":4096:8"

WITHOUT_DETERMINISM = (
    "note: trainer.deterministic=false: on a GPU the same command gives other numbers in the last "
    "digits, and a resumed run continues, but not bit for bit; trainer.deterministic=true makes "
    "both hold (slower kernels, TF32 off)"
)


def set_determinism(enabled: bool, device: torch.device) -> list[str]:
    """Set (or undo, for the next job of a multirun) the deterministic kernels and TF32; returns
    the notes for the console. ``CUBLAS_WORKSPACE_CONFIG`` is only set, never removed: cuBLAS
    reads it once, when it starts."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False
    # TF32 off when deterministic; otherwise torch's defaults (on for convolutions only).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = not enabled
    return [WITHOUT_DETERMINISM] if not enabled and device.type == "cuda" else []
