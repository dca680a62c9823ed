"""ssam.analysis against closed forms: linear least squares L(w) = ½ · mean (xᵀw − y)², whose
Hessian is H = XᵀX / n exactly, for the eigenvalues, the trace and the sharpness measures; two
small conv nets for the landscape and the promise to leave every model as it was."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from torch import nn

from ssam.analysis.hessian import hessian_vector_product, hutchinson_trace, top_eigenvalues
from ssam.analysis.landscape import (
    filter_normalized_direction,
    interpolated_state,
    interpolation_losses,
    surface_losses,
)
from ssam.analysis.loss import mean_loss
from ssam.analysis.mask_maps import read_mask_history
from ssam.analysis.sharpness import ascent_sharpness, random_sharpness

DIMENSION = 30
# The spectrum of H we build: five well separated top eigenvalues above a bulk in [0, 1].
TOP = [10.0, 7.0, 5.0, 4.0, 3.0]
RHO = 0.05


def half_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((outputs.squeeze(-1) - targets) ** 2).mean()


def least_squares(spectrum: list[float], *, sizes: tuple[int, ...] = (60, 25, 35), seed: int = 0):
    """A float64 linear model without bias, batches of the given sizes whose XᵀX / n has exactly
    ``spectrum`` as eigenvalues, and that H."""
    generator = torch.Generator().manual_seed(seed)
    n, d = sum(sizes), len(spectrum)
    left, _ = torch.linalg.qr(torch.randn(n, d, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    inputs = left @ torch.diag(torch.tensor(spectrum, dtype=torch.float64).mul(n).sqrt()) @ right.T
    targets = torch.randn(n, generator=generator, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=generator, dtype=torch.float64))
    data = list(zip(torch.split(inputs, list(sizes)), torch.split(targets, list(sizes))))
    return model, data, inputs.T @ inputs / n


def spread_spectrum(seed: int = 0) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    return TOP + torch.rand(DIMENSION - len(TOP), generator=generator, dtype=torch.float64).tolist()


def gradient_of(model: nn.Module, data) -> torch.Tensor:
    loss = sum(len(y) * half_squared_error(model(x), y) for x, y in data) / sum(len(y) for _, y in data)
    return torch.autograd.grad(loss, model.weight)[0].reshape(-1)


# Hessian: eigenvalues and trace.


def test_hessian_vector_product_over_unequal_batches_is_the_least_squares_hessian_times_v():
    model, data, hessian = least_squares(spread_spectrum())
    vector = torch.randn(1, DIMENSION, dtype=torch.float64)
    (product,) = hessian_vector_product(model, half_squared_error, data, [vector])
    torch.testing.assert_close(product.reshape(-1), hessian @ vector.reshape(-1), rtol=1e-12, atol=1e-12)


def test_lanczos_with_as_many_steps_as_weights_gives_the_exact_top_eigenvalues():
    model, data, hessian = least_squares(spread_spectrum())
    spectrum = top_eigenvalues(model, half_squared_error, data, k=5, steps=DIMENSION)
    expected = torch.linalg.eigvalsh(hessian).flip(0)[:5]
    torch.testing.assert_close(
        torch.tensor(spectrum.eigenvalues, dtype=torch.float64), expected, rtol=1e-10, atol=0
    )
    torch.testing.assert_close(expected, torch.tensor(TOP, dtype=torch.float64), rtol=1e-10, atol=0)


def test_lanczos_converges_on_separated_top_eigenvalues_in_fewer_steps_than_weights():
    model, data, hessian = least_squares(spread_spectrum())
    spectrum = top_eigenvalues(model, half_squared_error, data, k=5, steps=20)
    expected = torch.linalg.eigvalsh(hessian).flip(0)[:5].tolist()
    assert spectrum.steps == 20
    assert spectrum.eigenvalues == pytest.approx(expected, rel=1e-6)
    assert spectrum.eigenvalues[0] / spectrum.eigenvalues[4] == pytest.approx(10.0 / 3.0, rel=1e-6)
    # Each Ritz value lies within its residual of an eigenvalue of H.
    for value, residual in zip(spectrum.eigenvalues, spectrum.residuals):
        assert min(abs(value - e) for e in expected) <= residual + 1e-12


def test_lanczos_stops_early_and_exactly_when_the_hessian_has_few_distinct_eigenvalues():
    model, data, _ = least_squares([4.0] * 10 + [1.0] * 10)
    spectrum = top_eigenvalues(model, half_squared_error, data, k=2, steps=20)
    assert spectrum.steps == 2
    assert spectrum.eigenvalues == pytest.approx([4.0, 1.0], rel=1e-10)


def test_hutchinson_trace_is_exact_when_the_hessian_is_diagonal():
    # Orthogonal columns: XᵀX/n is diagonal, so every ±1 probe gives vᵀHv = tr(H).
    generator = torch.Generator().manual_seed(3)
    diagonal = torch.rand(8, generator=generator, dtype=torch.float64) * 5
    columns, _ = torch.linalg.qr(torch.randn(40, 8, generator=generator, dtype=torch.float64))
    inputs = columns * (diagonal * 40).sqrt()
    model = nn.Linear(8, 1, bias=False).double()
    data = [(inputs, torch.zeros(40, dtype=torch.float64))]
    estimate = hutchinson_trace(model, half_squared_error, data, probes=3)
    assert estimate.trace == pytest.approx(diagonal.sum().item(), rel=1e-12)
    assert estimate.std_error == pytest.approx(0.0, abs=1e-10)


def test_hutchinson_trace_is_within_its_standard_error_of_the_trace():
    model, data, hessian = least_squares(spread_spectrum())
    estimate = hutchinson_trace(model, half_squared_error, data, probes=400, seed=1)
    trace = torch.trace(hessian).item()
    assert abs(estimate.trace - trace) < 4 * estimate.std_error
    assert estimate.std_error < 0.05 * trace


def test_hessian_tools_use_eval_mode_and_leave_the_model_its_modes_weights_statistics_and_rng():
    model = small_conv_net(torch.float64)
    model.train()
    model[4].eval()  # a model may mix modes: each module gets its own back
    modes = [m.training for m in model.modules()]
    data = batches(2, dtype=torch.float64)
    weights = parameters_of(model)
    statistics = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    vector = [torch.ones_like(p) for p in model.parameters()]

    product = hessian_vector_product(model, F.cross_entropy, data, vector)
    top_eigenvalues(model, F.cross_entropy, data, k=2, steps=4)
    hutchinson_trace(model, F.cross_entropy, data, probes=2)

    assert [m.training for m in model.modules()] == modes
    assert_bitwise_equal(parameters_of(model), weights)
    assert_bitwise_equal([b.clone() for b in model.buffers()], statistics)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    model.eval()
    assert_bitwise_equal(product, hessian_vector_product(model, F.cross_entropy, data, vector))


# Sharpness.


def test_ascent_sharpness_of_least_squares_is_its_closed_form_per_batch():
    # L_B is quadratic: L_B(w + ε) − L_B(w) = gᵀε + ½ εᵀH_B ε exactly, with ε = ρ g / ‖g‖.
    model, data, _ = least_squares(spread_spectrum())
    weights = parameters_of(model)
    increases = ascent_sharpness(model, half_squared_error, data, rho=RHO)
    for (inputs, targets), value in zip(data, increases.values):
        g = gradient_of(model, [(inputs, targets)])
        h = inputs.T @ inputs / len(inputs)
        expected = RHO * g.norm() + 0.5 * RHO**2 * (g @ h @ g) / (g @ g)
        assert value == pytest.approx(expected.item(), rel=1e-9)
    assert increases.mean == pytest.approx(sum(increases.values) / len(data))
    assert_bitwise_equal(parameters_of(model), weights)


def test_random_sharpness_of_least_squares_averages_half_rho_squared_trace_over_dimension():
    # Quadratic: the pair ±ε gives exactly ½ εᵀHε (gᵀε cancels), whose mean over directions is
    # ½ρ² tr(H)/d; the weights are not at the minimum, so the cancellation is what is tested.
    model, data, hessian = least_squares(spread_spectrum())
    weights = parameters_of(model)
    increases = random_sharpness(model, half_squared_error, data, rho=RHO, samples=500, seed=2)
    expected = 0.5 * RHO**2 * torch.trace(hessian).item() / DIMENSION
    assert increases.mean == pytest.approx(expected, rel=0.1)
    low, high = 0.5 * RHO**2 * min(spread_spectrum()), 0.5 * RHO**2 * max(TOP)
    assert all(low - 1e-12 <= value <= high + 1e-12 for value in increases.values)
    assert_bitwise_equal(parameters_of(model), weights)


# Landscapes.


def two_trained_conv_nets():
    """Two different conv nets whose BatchNorm statistics have moved (as a checkpoint's have)."""
    models = [small_conv_net(seed=seed) for seed in (0, 1)]
    for model in models:
        with torch.no_grad():
            model(batches(1, seed=5)[0][0])
    return models


def test_interpolation_at_alpha_0_and_1_equals_each_models_own_loss():
    start_model, end_model = two_trained_conv_nets()
    data = batches(2)
    start, end = start_model.state_dict(), end_model.state_dict()
    own = {key: value.clone() for key, value in start.items()}
    losses = interpolation_losses(start_model, F.cross_entropy, data, start, end, [-0.5, 0.0, 0.5, 1.0, 1.5])
    assert losses[1] == mean_loss(start_model, F.cross_entropy, data)
    assert losses[3] == mean_loss(end_model, F.cross_entropy, data)
    assert losses[2] != losses[1]
    assert all(math.isfinite(loss) for loss in losses)
    for key, value in start_model.state_dict().items():
        assert torch.equal(value, own[key]), key


def test_interpolation_refuses_two_different_architectures():
    small, other = small_conv_net(), small_conv_net(classes=5)
    with pytest.raises(ValueError, match=r"8.weight has shape \(3, 16\) in one model and \(5, 16\)"):
        interpolated_state(small.state_dict(), other.state_dict(), 0.5, parameters=set())


def test_interpolation_extrapolates_weights_but_not_batchnorm_statistics():
    start, end = (model.state_dict() for model in two_trained_conv_nets())
    parameters = {name for name, _ in small_conv_net().named_parameters()}
    beyond = interpolated_state(start, end, -0.5, parameters=parameters)
    torch.testing.assert_close(beyond["0.weight"], 1.5 * start["0.weight"] - 0.5 * end["0.weight"])
    assert torch.equal(beyond["1.running_var"], start["1.running_var"])
    assert torch.equal(
        interpolated_state(start, end, 1.5, parameters=parameters)["1.running_var"], end["1.running_var"]
    )
    halfway = interpolated_state(start, end, 0.5, parameters=parameters)["1.running_var"]
    torch.testing.assert_close(halfway, (start["1.running_var"] + end["1.running_var"]) / 2)


def test_filter_normalized_direction_has_each_filters_norm_and_leaves_biases_and_batchnorm():
    model = small_conv_net()
    direction = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    for p, d in zip(model.parameters(), direction):
        assert d.shape == p.shape
        if p.dim() == 1:
            assert not d.any()
        else:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d, p)


def test_surface_is_the_models_loss_at_its_centre_and_leaves_the_weights():
    model = two_trained_conv_nets()[0]
    data = batches(1)
    weights = parameters_of(model)
    generator = torch.Generator().manual_seed(0)
    directions = tuple(filter_normalized_direction(model, generator=generator) for _ in range(2))
    losses = surface_losses(model, F.cross_entropy, data, directions, [-1.0, 0.0, 1.0])
    assert len(losses) == 3 and all(len(row) == 3 for row in losses)
    assert losses[1][1] == mean_loss(model, F.cross_entropy, data)
    assert len({value for row in losses for value in row}) == 9
    assert_bitwise_equal(parameters_of(model), weights)


# Mask maps.


def write_masks(path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def mask_record(update: int, layers: dict[str, float], **extra) -> dict:
    return {"epoch": update - 1, "update": update, "mask_density": 0.5, "layers": layers, **extra}


def test_mask_history_is_a_layer_by_refresh_density_matrix_with_overlaps(tmp_path):
    path = tmp_path / "masks.jsonl"
    write_masks(
        path,
        [
            mask_record(1, {"conv.weight": 1.0, "fc.weight": 0.25}, overlap_with_previous=None),
            mask_record(2, {"conv.weight": 0.75, "fc.weight": 0.5}, overlap_with_previous=0.6),
        ],
    )
    history = read_mask_history(path)
    assert history.layers == ["conv.weight", "fc.weight"]
    assert history.density == [[1.0, 0.75], [0.25, 0.5]]
    assert history.epochs == [0, 1] and history.updates == [1, 2]
    assert history.overlap_with_previous == [None, 0.6]


def test_mask_history_of_an_older_run_reports_overlaps_unavailable_not_invented(tmp_path):
    path = tmp_path / "masks.jsonl"
    write_masks(path, [mask_record(1, {"w": 1.0}), mask_record(2, {"w": 0.5})])
    assert read_mask_history(path).overlap_with_previous is None


def test_the_figures_are_written_as_png_files(tmp_path):
    from ssam.analysis.figures import plot_interpolation, plot_mask_history
    from ssam.analysis.mask_maps import MaskHistory

    plot_interpolation(
        [-0.5, 0.0, 0.5, 1.0, 1.5], [2.0, 1.0, 1.5, 1.1, 2.2], ("sam", "sgd"), tmp_path / "line.png"
    )
    history = MaskHistory(
        layers=["conv.weight", "fc.weight"],
        epochs=[0, 1],
        updates=[1, 2],
        density=[[0.4, 0.5], [0.6, 0.5]],
        mask_density=[0.5, 0.5],
        overlap_with_previous=[None, 0.8],
    )
    plot_mask_history(history, tmp_path / "masks.png")
    for name in ("line.png", "masks.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_quotes_path_settings_so_a_sweep_run_directory_is_taken_as_written():
    from ssam.analyze import quoted_paths

    arguments = [
        "checkpoint=outputs/sweeps/x/optimizer=sam,seed=0/last.pt",
        "what=[hessian]",
        "checkpoint=null",
    ]
    assert quoted_paths(arguments) == [
        "checkpoint='outputs/sweeps/x/optimizer=sam,seed=0/last.pt'",
        "what=[hessian]",
        "checkpoint=null",
    ]
