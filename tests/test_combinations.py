"""Sparse SAM combined with the cheap mechanisms (optimizer=ssam_f_rst, optimizer=ssam_f_looksam):
each equals the methods it combines at their extremes, bit for bit, so that what remains (the
combination itself) is the only new code; and its state, records and refusals."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bitwise_equal, batches, parameters_of, refusal, small_conv_net
from method_steps import Steps, build_method, resumed_in_process, take_steps
from runs import read_json, read_jsonl, train_ok

# Fisher's examples: the same 16 for every method of a comparison.
FISHER_SET = torch.utils.data.TensorDataset(*(torch.cat(part) for part in zip(*batches(2))))
FISHER = {"num_samples": 4, "fisher_method": "loop"}


def sparse_steps(name: str, data: list, *, epochs: int = 1, **settings) -> Steps:
    """Method ``name``'s steps over ``data``, split in ``epochs`` epochs, on a small conv net, with
    sparsity 0.5 and a Fisher estimate from FISHER_SET (for methods with a mask) and ``settings``."""
    model = small_conv_net()
    method = build_method(
        name, model, len(data), epochs=epochs, train_set=FISHER_SET, **{"sparsity": 0.5, **FISHER, **settings}
    )
    steps_per_epoch = len(data) // epochs
    results = []
    for epoch in range(epochs):
        method.start_epoch(epoch)
        start = epoch * steps_per_epoch
        results += take_steps(method, model, data[start : start + steps_per_epoch], start=start).results
    return Steps(model, method, results)


@pytest.mark.parametrize(
    "name, settings, same_as, same_settings",
    [
        ("ssam_f_rst", {"probability": 1.0}, "ssam_f", {}),
        ("ssam_f_rst", {"probability": 0.0}, "sgd", {}),
        ("ssam_f_rst", {"sparsity": 0.0, "probability": 0.5}, "rst", {"probability": 0.5}),
        ("ssam_f_looksam", {"k": 1}, "ssam_f", {}),
        ("ssam_f_looksam", {"sparsity": 0.0, "k": 3}, "looksam", {"k": 3}),
    ],
    ids=["rst-p=1-is-ssam_f", "rst-p=0-is-sgd", "s=0-is-rst", "looksam-k=1-is-ssam_f", "s=0-is-looksam"],
)
def test_a_combination_at_an_extreme_is_the_method_it_reduces_to_bit_for_bit(
    name, settings, same_as, same_settings
):
    data = batches(6)
    combined = sparse_steps(name, data, epochs=2, **settings)
    alone = sparse_steps(same_as, data, epochs=2, **same_settings)
    assert combined.climbed == alone.climbed
    assert_bitwise_equal(parameters_of(combined.model), parameters_of(alone.model))


def test_the_combinations_climb_along_a_masked_perturbation_on_their_schedule():
    data = batches(6)
    looksam = sparse_steps("ssam_f_looksam", data, epochs=2, k=2)
    assert looksam.climbed == [True, False, True, False, True, False]
    assert looksam.method.optimizer.mask_density() == pytest.approx(0.5, abs=0.01)
    # A mask that differs from LookSAM's all-ones one changes the weights.
    unmasked = sparse_steps("looksam", data, epochs=2, k=2)
    assert not torch.equal(parameters_of(looksam.model)[0], parameters_of(unmasked.model)[0])


@pytest.mark.parametrize(
    "name, settings", [("ssam_f_rst", {"probability": 0.5}), ("ssam_f_looksam", {"k": 2})]
)
def test_a_combination_resumed_from_its_state_dict_continues_exactly(name, settings):
    data = batches(6)
    given = {"sparsity": 0.5, **FISHER, "train_set": FISHER_SET, **settings}
    straight = small_conv_net()
    take_steps(build_method(name, straight, len(data), **given), straight, data)
    resumed = resumed_in_process(name, data, 3, small_conv_net, **given)
    assert_bitwise_equal(parameters_of(resumed), parameters_of(straight))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["optimizer=ssam_f_rst", "optimizer.probability=2"],
            "optimizer.probability must be in [0, 1], got 2",
        ),
        (["optimizer=ssam_f_rst", "sparsity=1.5"], "sparsity must be in [0, 1), got 1.5"),
        (["optimizer=ssam_f_looksam", "optimizer.k=0"], "optimizer.k must be an integer >= 1, got 0"),
        (["optimizer=ssam_f_looksam", "optimizer.m=4"], "optimizer=ssam_f_looksam needs optimizer.m=null "),
    ],
)
def test_a_bad_or_undefined_combination_setting_is_refused_naming_it(overrides, message):
    assert refusal(overrides).startswith(message)


@pytest.mark.slow
def test_a_combination_trains_through_train_py_recording_both_methods_metrics(tmp_path):
    overrides = [
        "optimizer=ssam_f_rst",
        "optimizer.num_samples=16",
        "dataset.train_size=128",
        "dataset.test_size=32",
        "batch_size=32",
        "epochs=2",
    ]
    train_ok(tmp_path, overrides)
    epochs = read_jsonl(tmp_path / "metrics.jsonl")
    assert [epoch["mask_density"] for epoch in epochs] == pytest.approx([0.5, 0.5], abs=0.01)
    assert all(0 <= epoch["sharpness_aware_fraction"] <= 1 for epoch in epochs)
    masks = read_jsonl(tmp_path / "masks.jsonl")
    assert [record["epoch"] for record in masks] == [0, 1]  # refreshed at each epoch's first SAM step
    summary = read_json(tmp_path / "summary.json")
    assert summary["optimizer"] == "ssam_f_rst" and summary["probability"] == 0.5
