"""Small models and batches shared by the optimizer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from ssam.errors import ConfigError
from ssam.train.validate import validate_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_conv_net(dtype: torch.dtype = torch.float32, *, seed: int = 0, classes: int = 3) -> nn.Module:
    """A conv net with BatchNorm, biases and a linear head: every kind of parameter the
    optimizers meet, small enough for float64 reference loops."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    )
    return model.to(dtype)


def batches(
    count: int, *, size: int = 8, dtype: torch.dtype = torch.float32, seed: int = 1, classes: int = 3
):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 1, 8, 8, generator=generator, dtype=dtype),
            torch.randint(0, classes, (size,), generator=generator),
        )
        for _ in range(count)
    ]


def parameters_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise_equal(left: list[torch.Tensor], right: list[torch.Tensor]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert torch.equal(a, b), (a - b).abs().max()


def assert_a_non_finite_example_skips_the_whole_step(build_optimizer, *, poisoned: int, **options) -> None:
    """A NaN in example ``poisoned`` of a batch of 12 skips the whole step of training_step(**options)
    under on_nonfinite=skip (weights and BatchNorm statistics as they were) and stops it by default,
    naming the ascent pass. ``build_optimizer(model)`` makes the optimizer."""
    from ssam.train.passes import NonFiniteError
    from ssam.train.steps import training_step

    x, y = batches(1, size=12)[0]
    x[poisoned] = float("nan")
    model = small_conv_net()
    before = parameters_of(model)
    buffers = [b.clone() for b in model.buffers()]
    result = training_step(model, build_optimizer(model), x, y, on_nonfinite="skip", **options)
    assert result.skipped
    assert_bitwise_equal(parameters_of(model), before)
    assert_bitwise_equal(list(model.buffers()), buffers)
    try:
        training_step(model, build_optimizer(model), x, y, **options)
    except NonFiniteError as error:
        assert error.pass_name == "ascent"
    else:
        raise AssertionError("a non-finite step must stop by default")


def refusal(overrides: list[str]) -> str:
    """The message with which validate_config refuses the config composed with ``overrides``
    (train.py prints it and exits with code 2)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    return str(error.value)
