"""Whole-tensor masks: the backward-cost model, the selection within an entry budget and a cost
budget, and SSAM-F / SSAM-D choosing whole tensors by their usual scores."""

import random

import pytest
import torch
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from test_ssam import RHO, SGD_OPTIONS, FixedMask, fisher_strategy, train
from torch import nn
from torch.utils.data import TensorDataset

from ssam import SAM, SSAM, DynamicMask, TensorSelection, estimate_backward_cost
from ssam.optim.backward_cost import BackwardCost
from ssam.train.methods import build_mask_strategy
from ssam.train.steps import training_step


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_backward_cost_counts_the_pass_through_above_the_lowest_tensor_and_each_weight_gradient():
    model = mlp()
    cost = estimate_backward_cost(model, list(model.parameters()), torch.randn(1, 4))
    # Forward FLOPs per example: linear 2·out·in, ReLU one per output.
    assert cost.input_grad == [64.0, 8.0, 128.0, 8.0, 32.0]
    assert cost.position == [0, 0, 2, 2, 4, 4]
    assert cost.weight_grad == [64.0, 8.0, 128.0, 8.0, 32.0, 2.0]
    assert cost.of({4}) == 32.0  # the last layer's weight: no pass-through at all
    assert cost.of({2}) == 8.0 + 32.0 + 128.0  # down through ReLU and the last layer
    assert cost.of({0}) == 8.0 + 128.0 + 8.0 + 32.0 + 64.0  # the first layer's input grad is never needed
    assert cost.of({4}, depth=2) == 8.0 + 32.0 + 32.0
    assert cost.full == 176.0 + 64.0 + 8.0 + 128.0 + 8.0 + 32.0 + 2.0
    assert cost.of(set()) == 0.0


def test_backward_cost_keeps_the_model_mode_and_places_unknown_parameters_first():
    model = mlp()
    model.extra = nn.Parameter(torch.zeros(3))  # owned by the container, like a ViT's pos_embed
    model.train()
    params = [*model[4].parameters(), model.extra]
    cost = estimate_backward_cost(model, params, torch.randn(1, 4))
    assert model.training and all(m.training for m in model.modules())
    assert cost.position == [4, 4, 0] and cost.weight_grad[2] == 3.0


def test_without_a_cost_limit_tensors_fill_the_budget_in_score_order():
    selection = TensorSelection()
    scores = [5.0, 4.0, 3.0, 2.0, 2.0]
    sizes = [6, 3, 5, 2, 2]
    # 6 fits in 10, then 3 (room left: 1), then nothing else does.
    assert selection.choose(scores, sizes, budget=10) == {0, 1}
    assert selection.choose(scores, sizes, budget=5) == {1, 3}  # 6 never fits; ties by index
    assert selection.choose(scores, sizes, budget=4, excluded={1}) == {3, 4}
    assert selection.choose(scores, sizes, budget=4, chosen={2}) == {2}  # kept even over budget


def test_a_cost_limit_keeps_the_backward_shallow():
    model = mlp()
    cost = estimate_backward_cost(model, list(model.parameters()), torch.randn(1, 4))
    sizes = [p.numel() for p in model.parameters()]
    scores = [10.0, 1.0, 5.0, 1.0, 1.0, 1.0]  # the first layer scores best but is the dearest
    unlimited = TensorSelection(cost=cost).choose(scores, sizes, budget=sum(sizes))
    assert unlimited == set(range(6))
    # 0.15 of the full backward (62.7 FLOPs) pays for the last layer (34) but not for the pass
    # down to the middle one (40 more).
    shallow = TensorSelection(cost=cost, ascent_cost=0.15).choose(scores, sizes, budget=sum(sizes))
    assert shallow == {4, 5}
    # 0.2 (83.6) also pays for that pass and the middle bias (8), not the middle weight (128).
    deeper = TensorSelection(cost=cost, ascent_cost=0.2).choose(scores, sizes, budget=sum(sizes))
    assert deeper == {3, 4, 5}
    # 0.5 (209) reaches the middle layer: 40 + 128 + 8 + 32 = 208, and the last bias (2) no
    # longer fits; the first layer alone would cost 240.
    middle = TensorSelection(cost=cost, ascent_cost=0.5).choose(scores, sizes, budget=sum(sizes))
    assert middle == {2, 3, 4}
    # 0.6 (250.8) reaches the first layer: its weight (240), its bias (8) and the last bias (2)
    # fit, and their score, 12, beats the 8 of the selection above.
    first = TensorSelection(cost=cost, ascent_cost=0.6).choose(scores, sizes, budget=sum(sizes))
    assert first == {0, 1, 5}


@pytest.mark.parametrize("seed", range(20))
def test_selections_respect_both_budgets(seed):
    rng = random.Random(seed)
    count = 12
    position = sorted(rng.randrange(8) for _ in range(count))
    cost = BackwardCost(
        position=position,
        weight_grad=[rng.uniform(1, 50) for _ in range(count)],
        input_grad=[rng.uniform(1, 50) for _ in range(8)],
    )
    sizes = [rng.randrange(1, 100) for _ in range(count)]
    scores = [rng.random() for _ in range(count)]
    budget = rng.randrange(50, sum(sizes))
    limit = rng.uniform(0.05, 1.0)
    chosen = TensorSelection(cost=cost, ascent_cost=limit).choose(scores, sizes, budget)
    assert sum(sizes[i] for i in chosen) <= budget
    assert cost.of(chosen) <= limit * cost.full + 1e-9


def test_bad_selection_settings_are_refused():
    with pytest.raises(ValueError, match="tensor_score must be one of sum, mean, got 'max'"):
        TensorSelection(reduce="max")
    with pytest.raises(ValueError, match=r"ascent_cost must be 'auto' or in \(0, 1\], got 0"):
        TensorSelection(ascent_cost=0)
    with pytest.raises(ValueError, match="needs a BackwardCost"):
        TensorSelection(ascent_cost="auto")


def is_whole_tensors(masks):
    return all(bool(m.all()) or not bool(m.any()) for m in masks)


def tensor_sparse_sam(model, strategy, sparsity):
    return SSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        sparsity=sparsity,
        norm="masked",
        mask_strategy=strategy,
        **SGD_OPTIONS,
    )


def cost_of(model):
    return estimate_backward_cost(model, list(model.parameters()), batches(1, size=1)[0][0])


@pytest.mark.parametrize("ascent_cost", [1.0, 0.3])
def test_fisher_mask_chooses_whole_tensors_within_budget(ascent_cost):
    model = small_conv_net()
    selection = TensorSelection(cost=cost_of(model), ascent_cost=ascent_cost)
    optimizer = tensor_sparse_sam(model, fisher_strategy(model, selection=selection), 0.5)
    train(model, optimizer, batches(2))
    assert is_whole_tensors(optimizer.masks)
    assert 0 < optimizer.mask_density() <= 0.5
    chosen = {i for i, m in enumerate(optimizer.masks) if bool(m.any())}
    assert selection.cost.of(chosen) <= ascent_cost * selection.cost.full
    # The ascent asks autograd for exactly the chosen tensors' gradients.
    assert [id(p) for p in optimizer.ascent_parameters()] == [
        id(p) for i, p in enumerate(model.parameters()) if i in chosen
    ]


def test_dynamic_mask_moves_whole_tensors_and_keeps_within_budget():
    model = small_conv_net()
    # Averaged scores: with sums, this small net's largest tensors win every draw.
    strategy = DynamicMask(total_epochs=4, drop_rate=0.5, seed=1, selection=TensorSelection(reduce="mean"))
    optimizer = tensor_sparse_sam(model, strategy, 0.8)
    data = batches(2)
    train(model, optimizer, data, epochs=1)
    first = [m.clone() for m in optimizer.masks]
    optimizer.set_epoch(1)
    for x, y in data:
        training_step(model, optimizer, x, y)
    second = optimizer.masks
    for masks in (first, second):
        assert is_whole_tensors(masks)
        assert 0 < sum(int(m.sum()) for m in masks) <= round(0.2 * sum(m.numel() for m in masks))
    assert any(not torch.equal(a, b) for a, b in zip(first, second))


def test_tensor_granularity_at_sparsity_zero_is_sam_bitwise():
    data = batches(4)
    sam_model = small_conv_net()
    train(sam_model, SAM(sam_model.parameters(), torch.optim.SGD, rho=RHO, **SGD_OPTIONS), data, epochs=2)
    model = small_conv_net()
    strategy = fisher_strategy(model, selection=TensorSelection())
    optimizer = SSAM(
        model.parameters(), torch.optim.SGD, rho=RHO, sparsity=0.0, mask_strategy=strategy, **SGD_OPTIONS
    )
    train(model, optimizer, data, epochs=2)
    assert optimizer.mask_density() == 1.0
    assert_bitwise_equal(parameters_of(model), parameters_of(sam_model))


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_automatic_cost_budget_is_half_the_density(sparsity):
    model = mlp()
    cost = estimate_backward_cost(model, list(model.parameters()), torch.randn(1, 4))
    sizes = [p.numel() for p in model.parameters()]
    scores = [float(i) for i in range(6)]
    budget = round(sum(sizes) * (1 - sparsity))
    automatic = TensorSelection(cost=cost, ascent_cost="auto").choose(scores, sizes, budget)
    explicit = TensorSelection(
        cost=cost, ascent_cost=(1 - sparsity) / 2 * budget / sum(sizes) / (1 - sparsity)
    )
    assert automatic == explicit.choose(scores, sizes, budget)
    assert cost.of(automatic) <= 0.5 * budget / sum(sizes) * cost.full


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_random_tensor_scores_are_one_draw_per_tensor_weighted_by_size_under_sum(reduce):
    params = list(small_conv_net().parameters())
    strategy = DynamicMask(total_epochs=4, seed=5, selection=TensorSelection(reduce=reduce))
    draws = torch.rand(len(params), generator=torch.Generator().manual_seed(5)).tolist()
    expected = [d * p.numel() for d, p in zip(draws, params)] if reduce == "sum" else draws
    assert strategy._tensor_scores("random", params) == expected


def test_tensor_granularity_with_the_trainers_defaults_at_sparsity_zero_is_sam_bitwise():
    data = batches(4)
    sam_model = small_conv_net()
    train(sam_model, SAM(sam_model.parameters(), torch.optim.SGD, rho=RHO, **SGD_OPTIONS), data, epochs=1)
    model = small_conv_net()
    dataset = TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    strategy = build_mask_strategy(
        "ssam_f", model, dataset, epochs=1, seed=0, update_freq=1, num_samples=8, granularity="tensor"
    )
    assert strategy.selection.ascent_cost == "auto"
    optimizer = SSAM(
        model.parameters(), torch.optim.SGD, rho=RHO, sparsity=0.0, mask_strategy=strategy, **SGD_OPTIONS
    )
    train(model, optimizer, data, epochs=1)
    assert optimizer.mask_density() == 1.0
    assert_bitwise_equal(parameters_of(model), parameters_of(sam_model))


def test_an_empty_mask_reports_a_zero_perturbation():
    model = small_conv_net()
    masks = [torch.zeros(p.shape, dtype=torch.bool) for p in model.parameters()]
    optimizer = tensor_sparse_sam(model, FixedMask(masks), 1.0)
    optimizer.last_perturbation_norm = torch.tensor(3.0)  # as if left from an earlier step
    train(model, optimizer, batches(1))
    assert optimizer.last_perturbation_norm.item() == 0.0
