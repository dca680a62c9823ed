"""Sparse SAM: the exact limits (s = 0 is SAM, s = 1 is SGD), the masked perturbation, the
two normalisations, the refresh schedule and the state_dict."""

import io

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from torch.utils.data import TensorDataset

from ssam import SAM, SSAM, DynamicMask, FisherMask
from ssam.optim.ssam import mask_overlap
from ssam.train.steps import training_step

LR, MOMENTUM, WEIGHT_DECAY, RHO = 0.1, 0.9, 5e-4, 0.05
SGD_OPTIONS = dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


class FixedMask:
    """A strategy that always returns the masks it was given: any rule can be plugged in."""

    def __init__(self, masks):
        self.masks = masks
        self.calls = []

    def is_due(self, epoch):
        return True

    def __call__(self, params, masks, sparsity, epoch):
        self.calls.append(epoch)
        return self.masks

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def fisher_strategy(model, **options):
    data = batches(4, size=8)
    dataset = TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    return FisherMask(model, dataset, num_samples=8, **options)


def strategies(model):
    return {
        "fisher": fisher_strategy(model),
        "dynamic": DynamicMask(total_epochs=4, seed=3),
    }


def train(model, optimizer, data, epochs=1):
    for epoch in range(epochs):
        if isinstance(optimizer, SSAM):
            optimizer.set_epoch(epoch)
        for x, y in data:
            training_step(model, optimizer, x, y)


def trained_ssam(sparsity, strategy, data):
    model = small_conv_net()
    optimizer = SSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        sparsity=sparsity,
        mask_strategy=strategies(model)[strategy],
        **SGD_OPTIONS,
    )
    train(model, optimizer, data, epochs=2)
    return model, optimizer


@pytest.mark.parametrize("strategy", ["fisher", "dynamic"])
def test_sparsity_zero_is_sam_bitwise(strategy):
    data = batches(5)
    sam_model = small_conv_net()
    train(sam_model, SAM(sam_model.parameters(), torch.optim.SGD, rho=RHO, **SGD_OPTIONS), data, epochs=2)
    ssam_model, ssam = trained_ssam(0.0, strategy, data)
    assert ssam.mask_density() == 1.0
    assert_bitwise_equal(parameters_of(ssam_model), parameters_of(sam_model))


@pytest.mark.parametrize("strategy", ["fisher", "dynamic"])
def test_sparsity_one_is_two_pass_sgd_bitwise(strategy):
    data = batches(5)
    sgd_model = small_conv_net()
    train(sgd_model, torch.optim.SGD(sgd_model.parameters(), **SGD_OPTIONS), data, epochs=2)
    ssam_model, ssam = trained_ssam(1.0, strategy, data)
    assert ssam.mask_density() == 0.0
    assert_bitwise_equal(parameters_of(ssam_model), parameters_of(sgd_model))


def random_masks(model, density=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(p.shape, generator=generator) < density for p in model.parameters()]


@pytest.mark.parametrize("norm", ["full", "masked"])
def test_perturbation_matches_float64_formula(norm):
    model = small_conv_net(torch.float64)
    masks = random_masks(model)
    optimizer = SSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        sparsity=0.5,
        norm=norm,
        mask_strategy=FixedMask(masks),
        lr=0.1,
    )
    x, y = batches(1, dtype=torch.float64)[0]
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    before = parameters_of(model)
    optimizer.first_step()
    masked = [m * g for m, g in zip(masks, grads)]
    denominator = torch.sqrt(sum((d**2).sum() for d in (masked if norm == "masked" else grads)))
    for p, w, d in zip(model.parameters(), before, masked):
        torch.testing.assert_close(p.detach(), w + RHO * d / (denominator + 1e-12), rtol=0, atol=1e-15)


def test_masked_norm_has_radius_rho_and_full_norm_shrinks_it():
    x, y = batches(1, dtype=torch.float64)[0]
    norms = {}
    for norm in ("full", "masked"):
        model = small_conv_net(torch.float64)
        optimizer = SSAM(
            model.parameters(),
            torch.optim.SGD,
            rho=RHO,
            sparsity=0.5,
            norm=norm,
            mask_strategy=FixedMask(random_masks(model)),
            lr=0.1,
        )
        F.cross_entropy(model(x), y).backward()
        optimizer.first_step()
        norms[norm] = optimizer.last_perturbation_norm.item()
    assert norms["masked"] == pytest.approx(RHO, rel=1e-12)
    assert 0 < norms["full"] < RHO


def test_weights_outside_the_mask_are_not_perturbed():
    model = small_conv_net()
    masks = random_masks(model, density=0.3)
    optimizer = SSAM(
        model.parameters(), torch.optim.SGD, rho=1.0, sparsity=0.7, mask_strategy=FixedMask(masks), lr=0.1
    )
    x, y = batches(1)[0]
    before = parameters_of(model)
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step()
    for p, w, m in zip(model.parameters(), before, masks):
        assert torch.equal(p.detach()[~m], w[~m])
        # A conv bias before BatchNorm has a zero gradient but for rounding: it may stay put.
        moved = p.detach()[m] != w[m]
        assert moved[p.grad[m].abs() > 1e-6].all()


def test_fisher_mask_is_computed_before_the_first_perturbation():
    model = small_conv_net()
    optimizer = SSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        sparsity=0.9,
        mask_strategy=fisher_strategy(model),
        lr=0.1,
    )
    assert optimizer.masks is None
    x, y = batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step()
    total = sum(p.numel() for p in model.parameters())
    assert sum(int(m.sum()) for m in optimizer.masks) == round(total * (1 - 0.9))
    assert all(
        m.dtype == torch.bool and m.device == p.device for m, p in zip(optimizer.masks, model.parameters())
    )


def test_mask_is_refreshed_every_update_freq_epochs():
    model = small_conv_net()
    strategy = fisher_strategy(model, update_freq=2)
    optimizer = SSAM(
        model.parameters(), torch.optim.SGD, rho=RHO, sparsity=0.5, mask_strategy=strategy, lr=0.01
    )
    refreshed_at = []
    for epoch in range(5):
        updates = optimizer.mask_updates
        optimizer.set_epoch(epoch)
        for x, y in batches(2):
            training_step(model, optimizer, x, y)
        if optimizer.mask_updates > updates:
            refreshed_at.append(epoch)
    assert refreshed_at == [0, 2, 4]
    assert optimizer.mask_update_time_s > 0


@pytest.mark.parametrize("strategy", ["fisher", "dynamic"])
def test_state_dict_round_trip_keeps_masks_and_continues_bitwise(strategy):
    data = batches(4)

    def fresh():
        model = small_conv_net()
        optimizer = SSAM(
            model.parameters(),
            torch.optim.SGD,
            rho=RHO,
            sparsity=0.8,
            mask_strategy=strategies(model)[strategy],
            **SGD_OPTIONS,
        )
        return model, optimizer

    model, optimizer = fresh()
    train(model, optimizer, data, epochs=2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    for epoch in (2, 3):
        optimizer.set_epoch(epoch)
        for x, y in data:
            training_step(model, optimizer, x, y)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model, resumed = fresh()
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["optimizer"])
    assert all(m.dtype == torch.bool for m in resumed.masks)
    for epoch in (2, 3):
        resumed.set_epoch(epoch)
        for x, y in data:
            training_step(resumed_model, resumed, x, y)
    assert_bitwise_equal(resumed.masks, optimizer.masks)
    assert_bitwise_equal(parameters_of(resumed_model), parameters_of(model))


def test_loading_masks_of_another_model_is_refused():
    model = small_conv_net()
    optimizer = SSAM(
        model.parameters(),
        torch.optim.SGD,
        sparsity=0.5,
        mask_strategy=FixedMask(random_masks(model)),
        lr=0.1,
    )
    state = optimizer.state_dict()
    state["masks"] = [torch.ones(3, 3, dtype=torch.bool) for _ in model.parameters()]
    with pytest.raises(ValueError, match="another model"):
        optimizer.load_state_dict(state)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(sparsity=1.5), r"sparsity must be in \[0, 1\], got 1.5"),
        (dict(sparsity=-0.1), r"sparsity must be in \[0, 1\], got -0.1"),
        (dict(norm="l1"), "norm must be one of full, masked, got 'l1'"),
        (dict(rho=-1.0), "rho must be >= 0, got -1.0"),
    ],
)
def test_bad_settings_are_rejected_with_the_allowed_values(options, message):
    model = small_conv_net()
    with pytest.raises(ValueError, match=message):
        SSAM(model.parameters(), torch.optim.SGD, mask_strategy=FixedMask([]), lr=0.1, **options)


def test_mask_overlap_is_the_jaccard_index():
    first = [torch.tensor([True, True, False, False]), torch.tensor([True])]
    second = [torch.tensor([True, False, True, False]), torch.tensor([True])]
    # on in both: 2 (first entry, the second tensor); on in either: 4
    assert mask_overlap(first, second) == 0.5
    assert mask_overlap(first, first) == 1.0
    empty = [torch.zeros(3, dtype=torch.bool)]
    assert mask_overlap(empty, empty) == 1.0
