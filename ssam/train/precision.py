"""Mixed precision for the training step: autocast, and fp16 loss scaling for two passes."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

AMP = ("none", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DynamicLossScale:
    """fp16 loss scaling that covers both passes of a SAM step.

    torch.amp.GradScaler allows one unscale and one inf check per optimizer step, but a SAM
    step unscales twice (the ascent gradient, then the descent gradient) and must skip the
    whole step when either overflows. The rule is GradScaler's: halve the scale on an
    overflow, double it after ``growth_interval`` steps in a row without one.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_interval: int = 2000) -> None:
        self.scale = init_scale
        self.growth_interval = growth_interval
        self.good_steps = 0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, overflowed: bool) -> None:
        if overflowed:
            self.scale /= 2.0
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= 2.0
            self.good_steps = 0

    def state_dict(self) -> dict[str, float | int]:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])


class Precision:
    """What ``trainer.amp`` asks for on ``device``: none (float32), bf16, or fp16 with a scale."""

    def __init__(self, amp: str, device: torch.device) -> None:
        if amp not in AMP:
            raise ValueError(f"amp must be one of {', '.join(AMP)}, got {amp!r}")
        self.amp = amp
        self.device_type = device.type
        self.loss_scale = DynamicLossScale() if amp == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        if self.amp == "none":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.amp])

    def state_dict(self) -> dict:
        return {} if self.loss_scale is None else {"loss_scale": self.loss_scale.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.loss_scale is not None and "loss_scale" in state:
            self.loss_scale.load_state_dict(state["loss_scale"])


FLOAT32 = Precision("none", torch.device("cpu"))
