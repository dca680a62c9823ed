"""SSAM-D's dynamic mask: exact density at every update, the cosine drop-rate schedule, and
drop/growth by the chosen scores."""

import math

import pytest
import torch

from ssam.optim import DynamicMask, active_count
from ssam.optim.masks import SCORES


def fake_params(seed=0, shapes=((6, 5), (17,), (3, 3, 2))):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator) for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    return params


def count(masks):
    return sum(int(m.sum()) for m in masks)


def flat(masks):
    return torch.cat([m.flatten() for m in masks])


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("drop", SCORES)
@pytest.mark.parametrize("growth", SCORES)
def test_density_is_exact_after_every_update_of_a_whole_schedule(sparsity, drop, growth):
    epochs = 20
    params = fake_params(shapes=((40, 25), (300,), (7, 7, 3)))
    total = sum(p.numel() for p in params)
    strategy = DynamicMask(total_epochs=epochs, drop_rate=0.8, drop=drop, growth=growth, seed=1)
    masks = strategy(params, None, sparsity, epoch=0)
    assert count(masks) == active_count(total, sparsity)
    for epoch in range(1, epochs):
        for p in params:
            p.grad = torch.randn_like(p)
        assert strategy.is_due(epoch)
        masks = strategy(params, masks, sparsity, epoch)
        assert count(masks) == active_count(total, sparsity), f"epoch {epoch}"


def test_a_high_drop_rate_at_low_sparsity_keeps_the_count():
    """Where the paper's code loses entries: d·(1−s) > s, more to drop than there is room to grow."""
    params = fake_params()
    total = sum(p.numel() for p in params)
    strategy = DynamicMask(total_epochs=10, drop_rate=1.0, seed=0)
    masks = strategy(params, None, 0.1, epoch=0)
    masks = strategy(params, masks, 0.1, epoch=1)
    assert count(masks) == active_count(total, 0.1)


@pytest.mark.parametrize("epoch", [0, 1, 5, 9, 10])
def test_drop_rate_follows_the_cosine_schedule(epoch):
    strategy = DynamicMask(total_epochs=10, drop_rate=0.4)
    assert strategy.drop_rate_at(epoch) == pytest.approx(
        0.4 * (1 + math.cos(math.pi * epoch / 10)) / 2, abs=1e-15
    )


@pytest.mark.parametrize("epoch", [1, 3, 7])
def test_each_update_swaps_the_scheduled_number_of_entries(epoch):
    params = fake_params()
    total = sum(p.numel() for p in params)
    sparsity = 0.7
    strategy = DynamicMask(total_epochs=8, drop_rate=0.5, seed=2)
    before = strategy(params, None, sparsity, epoch=0)
    after = strategy(params, before, sparsity, epoch)
    active = active_count(total, sparsity)
    expected = min(round(strategy.drop_rate_at(epoch) * active), active, total - active)
    switched_off = (flat(before) & ~flat(after)).sum().item()
    switched_on = (~flat(before) & flat(after)).sum().item()
    assert switched_off == switched_on == expected


def test_gradient_drop_removes_the_smallest_gradients_and_weight_growth_adds_the_largest_weights():
    params = fake_params()
    strategy = DynamicMask(total_epochs=4, drop_rate=0.5, drop="gradient", growth="weight", seed=0)
    before = strategy(params, None, 0.5, epoch=0)
    after = strategy(params, before, 0.5, epoch=1)
    gradients = torch.cat([p.grad.abs().flatten() for p in params])
    weights = torch.cat([p.abs().flatten() for p in params])
    was_on, now_on = flat(before), flat(after)
    dropped, kept = was_on & ~now_on, was_on & now_on
    grown, left_out = ~was_on & now_on, ~was_on & ~now_on
    assert gradients[dropped].max() <= gradients[kept].min()
    assert weights[grown].min() >= weights[left_out].max()


def test_updates_are_due_every_update_freq_epochs_after_the_first():
    strategy = DynamicMask(total_epochs=10, update_freq=3)
    assert [e for e in range(10) if strategy.is_due(e)] == [3, 6, 9]


def test_generator_state_round_trip_repeats_the_random_draws():
    params = fake_params()
    strategy = DynamicMask(total_epochs=5, growth="random", seed=4)
    masks = strategy(params, None, 0.5, epoch=0)
    state = strategy.state_dict()
    expected = strategy(params, masks, 0.5, epoch=1)
    restored = DynamicMask(total_epochs=5, growth="random", seed=999)
    restored.load_state_dict(state)
    assert torch.equal(flat(restored(params, masks, 0.5, epoch=1)), flat(expected))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(drop_rate=1.5), r"drop_rate must be in \[0, 1\], got 1.5"),
        (dict(drop="magnitude"), "drop must be one of gradient, weight, random, got 'magnitude'"),
        (dict(growth="momentum"), "growth must be one of gradient, weight, random, got 'momentum'"),
        (dict(update_freq=0), "update_freq must be an integer >= 1, got 0"),
        (dict(total_epochs=0), "total_epochs must be an integer >= 1, got 0"),
    ],
)
def test_bad_dynamic_settings_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        DynamicMask(**{"total_epochs": 5, **options})
