"""A built-in method's steps as the trainer takes them (``take_step``), with the examples its
model's forward passes saw, an in-process stop and resume through its ``state_dict``, and the
pieces of the float64 reference loops its maths is checked against: shared by the tests of the
methods with steps of their own (LookSAM, RST, AE-SAM)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from helpers import small_conv_net
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset

from ssam.train.kinds import Method, RunContext
from ssam.train.loop import take_step
from ssam.train.methods import METHODS
from ssam.train.passes import Passes, StepResult
from ssam.train.precision import FLOAT32, Precision

SETTINGS = dict(lr=0.1, weight_decay=5e-4, rho=0.05)
LR, MOMENTUM, WEIGHT_DECAY, RHO, NORM_EPS = 0.1, 0.9, 5e-4, 0.05, 1e-12


def tiny_mlp(dtype: torch.dtype = torch.float64, *, seed: int = 0, classes: int = 3) -> nn.Module:
    """No BatchNorm, so that a reference loop of plain gradients computes what the method does."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, classes)).to(dtype)


def build_method(
    name: str,
    model: nn.Module,
    total_steps: int,
    *,
    seed: int = 0,
    epochs: int = 1,
    train_set: Dataset | None = None,
    batch_positions: Callable[[int], torch.Tensor] | None = None,
    **settings,
) -> Method:
    """Method ``name`` over ``model`` with SETTINGS and ``settings`` (those it declares), for a run of
    ``total_steps`` steps in ``epochs`` epochs; ``train_set`` is what a mask strategy reads, and
    ``batch_positions`` says which of its examples each step's batch holds."""
    values = {key: value for key, value in {**SETTINGS, **settings}.items() if key in METHODS[name].settings}
    run = RunContext(
        model, train_set, epochs, total_steps // epochs, seed=seed, batch_positions=batch_positions
    )
    return METHODS[name](values, run)


@dataclass
class Steps:
    """What steps ``start``, ``start`` + 1, ... did: their results and the examples each forward saw."""

    model: nn.Module
    method: Method
    results: list[StepResult] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)

    @property
    def climbed(self) -> list[bool]:
        return [result.sharpness_aware for result in self.results]


def take_steps(
    method: Method,
    model: nn.Module,
    data: list,
    *,
    start: int = 0,
    accumulate_steps: int = 1,
    precision: Precision = FLOAT32,
) -> Steps:
    steps = Steps(model, method)
    hook = model.register_forward_hook(lambda module, inputs, output: steps.seen.append(len(inputs[0])))
    passes = Passes(model, precision, accumulate_steps=accumulate_steps)
    steps.results = [take_step(method, passes, x, y, start + i) for i, (x, y) in enumerate(data)]
    hook.remove()
    return steps


def run_steps(name: str, data: list, *, model: nn.Module | None = None, seed: int = 0, **options) -> Steps:
    """Method ``name``'s steps over ``data``, a run of ``len(data)`` steps, on ``model`` (a small
    conv net with BatchNorm by default). ``options``: the method's settings, and take_steps's."""
    model = model if model is not None else small_conv_net()
    step_options = {key: options.pop(key) for key in ("accumulate_steps", "precision") if key in options}
    method = build_method(name, model, len(data), seed=seed, **options)
    return take_steps(method, model, data, **step_options)


def resumed_in_process(name: str, data: list, stop: int, make_model, **settings) -> nn.Module:
    """Steps 0 … ``stop`` − 1, a checkpoint of the weights and ``method.state_dict()`` written and
    read back as the trainer does (``torch.load(weights_only=True)``), then a new model and method
    loaded from it take the remaining steps of the ``len(data)``-step run; returns that model."""
    model = make_model()
    method = build_method(name, model, len(data), **settings)
    take_steps(method, model, data[:stop])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    method = build_method(name, model, len(data), **settings)
    method.load_state_dict(checkpoint["method"])
    take_steps(method, model, data[stop:], start=stop)
    return model


# --- float64 reference loops --------------------------------------------------------------------


def loss_gradient(model: nn.Module, weights: list[torch.Tensor], x, y) -> list[torch.Tensor]:
    """∇ of the batch's mean cross-entropy at ``weights``, by torch.autograd."""
    weights = [w.detach().requires_grad_() for w in weights]
    names = [name for name, _ in model.named_parameters()]
    logits = functional_call(model, dict(zip(names, weights)), (x,))
    return list(torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), weights))


def norm(vectors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((v * v).sum() for v in vectors))


def sam_gradient(
    model: nn.Module, weights: list[torch.Tensor], g: list[torch.Tensor], x, y
) -> list[torch.Tensor]:
    """g_s = ∇L(w + ε), ε = ρ·g / (‖g‖ + 10⁻¹²)."""
    scale = RHO / (norm(g) + NORM_EPS)
    return loss_gradient(model, [w + scale * d for w, d in zip(weights, g)], x, y)


class ReferenceSGD:
    """torch.optim.SGD's rule written out: d ← d + λw; b ← d (first step), else μ·b + d; w ← w − η·b."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        self.weights = [w.detach().clone() for w in weights]
        self.buffers: list[torch.Tensor] | None = None

    def step(self, directions: list[torch.Tensor]) -> None:
        decayed = [d + WEIGHT_DECAY * w for d, w in zip(directions, self.weights)]
        if self.buffers is None:
            self.buffers = decayed
        else:
            self.buffers = [MOMENTUM * b + d for b, d in zip(self.buffers, decayed)]
        self.weights = [w - LR * b for w, b in zip(self.weights, self.buffers)]
