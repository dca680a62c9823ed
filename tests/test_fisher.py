"""SSAM-F's Fisher scores: every method equals a per-sample float64 loop, leaves the model and
the random streams as they were, and the top-k mask keeps exactly k entries."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, batches, small_conv_net
from torch.utils.data import Dataset, TensorDataset

from ssam.optim import FisherMask, active_count, fisher_scores, global_topk_mask


def reference_fisher(model, inputs, targets):
    """Σᵢ (∂ℓᵢ/∂w)², one sample at a time through .grad, on a copy of the model (whose
    BatchNorm statistics the loop may change: that is the paper code's defect, not ours)."""
    model = copy.deepcopy(model).train()
    totals = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(inputs)):
        model.zero_grad()
        F.cross_entropy(model(inputs[i : i + 1]), targets[i : i + 1]).backward()
        for total, p in zip(totals, model.parameters()):
            total += p.grad**2
    return totals


def float64_samples(count):
    inputs, targets = batches(1, size=count, dtype=torch.float64, seed=7)[0]
    return inputs, targets


@pytest.mark.parametrize("method", ["loop", "vmap"])
@pytest.mark.parametrize("count", [1, 5, 37])
def test_fisher_method_equals_per_sample_reference(method, count):
    model = small_conv_net(torch.float64)
    inputs, targets = float64_samples(count)
    expected = reference_fisher(model, inputs, targets)
    scores = fisher_scores(model, list(model.parameters()), inputs, targets, method=method, chunk_size=8)
    for score, reference in zip(scores, expected):
        torch.testing.assert_close(score, reference, rtol=0, atol=1e-10)
    assert any(score.abs().sum() > 0 for score in scores)


def test_fisher_of_a_subset_of_parameters_matches_those_entries():
    model = small_conv_net(torch.float64)
    inputs, targets = float64_samples(6)
    expected = reference_fisher(model, inputs, targets)
    chosen = [0, 3, 7]
    params = [list(model.parameters())[i] for i in chosen]
    for method in ("loop", "vmap"):
        scores = fisher_scores(model, params, inputs, targets, method=method)
        for score, i in zip(scores, chosen):
            torch.testing.assert_close(score, expected[i], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_fisher_pass_leaves_model_buffers_mode_and_rng_untouched(method):
    model = small_conv_net()
    model.eval()
    weights = [t.clone() for t in model.state_dict().values()]
    inputs, targets = batches(1, size=6)[0]
    torch.manual_seed(123)
    expected_draw = torch.rand(4)
    torch.manual_seed(123)
    fisher_scores(model, list(model.parameters()), inputs, targets, method=method)
    assert torch.equal(torch.rand(4), expected_draw)
    assert_bitwise_equal(list(model.state_dict().values()), weights)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_unknown_fisher_method_is_rejected():
    model = small_conv_net()
    inputs, targets = batches(1)[0]
    with pytest.raises(ValueError, match="fisher method must be one of auto, loop, vmap, got 'exact'"):
        fisher_scores(model, list(model.parameters()), inputs, targets, method="exact")


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99, 1.0])
def test_topk_keeps_exactly_k_of_the_highest_scores(sparsity):
    generator = torch.Generator().manual_seed(0)
    scores = [
        torch.rand(3, 4, generator=generator),
        torch.rand(7, generator=generator),
        torch.rand(2, 2, 2, generator=generator),
    ]
    masks = global_topk_mask(scores, sparsity)
    flat_scores = torch.cat([s.flatten() for s in scores])
    flat_mask = torch.cat([m.flatten() for m in masks])
    k = active_count(flat_scores.numel(), sparsity)
    assert int(flat_mask.sum()) == k
    assert [m.shape for m in masks] == [s.shape for s in scores]
    if 0 < k < flat_scores.numel():
        assert flat_scores[flat_mask].min() > flat_scores[~flat_mask].max()


def test_topk_breaks_ties_by_position_deterministically():
    scores = [torch.ones(4), torch.tensor([2.0, 1.0, 1.0]), torch.ones(3)]
    masks = global_topk_mask(scores, sparsity=0.6)  # k = round(10 · 0.4) = 4
    assert [m.tolist() for m in masks] == [
        [True, True, True, False],
        [True, False, False],
        [False, False, False],
    ]
    assert [m.tolist() for m in global_topk_mask(scores, sparsity=0.6)] == [m.tolist() for m in masks]


class RandomlyAugmented(Dataset):
    """Draws from the global RNG on every access, like a torchvision augmentation."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        x, y = self.base[index]
        return x + 0.01 * torch.rand(()), y


def test_fisher_samples_ignore_the_global_seed_and_leave_its_stream_alone():
    inputs, targets = batches(1, size=50)[0]
    dataset = RandomlyAugmented(TensorDataset(inputs, targets))
    strategy = FisherMask(small_conv_net(), dataset, num_samples=10, seed=5)
    torch.manual_seed(1)
    first_targets = strategy.samples(epoch=3, device=torch.device("cpu"))[1]
    after = torch.rand(3)
    torch.manual_seed(1)
    expected_after = torch.rand(3)
    torch.manual_seed(2)
    second_targets = strategy.samples(epoch=3, device=torch.device("cpu"))[1]
    assert torch.equal(after, expected_after)
    assert torch.equal(first_targets, second_targets)
    assert not torch.equal(first_targets, strategy.samples(epoch=4, device=torch.device("cpu"))[1])


def test_fisher_mask_works_with_a_single_sample():
    model = small_conv_net()
    inputs, targets = batches(1, size=20)[0]
    strategy = FisherMask(model, TensorDataset(inputs, targets), num_samples=1)
    masks = strategy(list(model.parameters()), None, 0.5, epoch=0)
    total = sum(p.numel() for p in model.parameters())
    assert sum(int(m.sum()) for m in masks) == active_count(total, 0.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_samples=0), "num_samples must be an integer >= 1, got 0"),
        (dict(num_samples=21), r"num_samples \(21\) is larger than the dataset \(20 examples\)"),
        (dict(update_freq=0), "update_freq must be an integer >= 1, got 0"),
        (dict(method="fast"), "fisher method must be one of auto, loop, vmap, got 'fast'"),
    ],
)
def test_bad_fisher_settings_are_rejected(options, message):
    inputs, targets = batches(1, size=20)[0]
    with pytest.raises(ValueError, match=message):
        FisherMask(small_conv_net(), TensorDataset(inputs, targets), **{"num_samples": 4, **options})


def test_topk_with_nan_scores_still_keeps_exactly_k_and_ranks_nan_last():
    scores = [torch.tensor([1.0, float("nan"), 3.0, 2.0, float("nan")])]
    (mask,) = global_topk_mask(scores, sparsity=0.4)  # k = 3
    assert mask.tolist() == [True, False, True, True, False]


def test_fisher_pass_keeps_each_submodule_mode():
    model = small_conv_net()
    model.train()
    model[1].eval()  # a BatchNorm a user keeps frozen
    inputs, targets = batches(1, size=3)[0]
    fisher_scores(model, list(model.parameters()), inputs, targets, method="loop")
    assert model.training and not model[1].training


def test_a_model_that_cannot_take_one_example_is_refused_when_the_mask_is_built():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.BatchNorm1d(4))
    inputs, targets = batches(1, size=20)[0]
    with pytest.raises(ValueError, match="one example at a time in training mode"):
        FisherMask(model, TensorDataset(inputs, targets), num_samples=4)
