"""The ascent pass computes only the gradients Sparse SAM's mask can use, and that changes
nothing: the same weights, bit for bit, as with every gradient computed."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from test_ssam import SGD_OPTIONS, FixedMask

from ssam import SSAM
from ssam.train.steps import training_step

RHO = 0.05


class EveryGradientSSAM(SSAM):
    """The reference: the ascent computes every gradient, as before the restriction."""

    def ascent_parameters(self):
        return [p for group in self.param_groups for p in group["params"]]


def masks_leaving_out_the_first_block(model, seed=0):
    """Random half masks, except the first conv and BatchNorm, which are not perturbed."""
    generator = torch.Generator().manual_seed(seed)
    masks = [torch.rand(p.shape, generator=generator) < 0.5 for p in model.parameters()]
    for index in range(4):  # conv0 weight, bias; bn1 weight, bias
        masks[index][...] = False
    return masks


def sparse_sam(model, norm, optimizer_class=SSAM):
    return optimizer_class(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        sparsity=0.5,
        norm=norm,
        mask_strategy=FixedMask(masks_leaving_out_the_first_block(model)),
        **SGD_OPTIONS,
    )


@pytest.mark.parametrize("norm", ["masked", "full"])
def test_restricted_ascent_gives_the_same_weights_bitwise(norm):
    data = batches(6)
    results = []
    for optimizer_class in (SSAM, EveryGradientSSAM):
        model = small_conv_net()
        optimizer = sparse_sam(model, norm, optimizer_class)
        optimizer.set_epoch(0)
        for x, y in data:
            training_step(model, optimizer, x, y)
        results.append((parameters_of(model), optimizer.last_perturbation_norm))
    assert_bitwise_equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def sparse_sam_with_its_mask(model):
    """Masked-norm Sparse SAM after one step, which made its mask (leaving out the first block)."""
    optimizer = sparse_sam(model, "masked")
    optimizer.set_epoch(0)
    x, y = batches(1, seed=2)[0]
    training_step(model, optimizer, x, y)
    return optimizer


def ascent_with_a_probe(model, optimizer, x, y):
    """Runs the ascent backward; returns how often a gradient reached the first block's output."""
    reached = []
    hidden = model[:3](x)
    hidden.register_hook(lambda grad: reached.append(1))
    loss = F.cross_entropy(model[3:](hidden), y)
    optimizer.zero_grad(set_to_none=True)
    optimizer.ascent_backward(loss)
    return len(reached)


def test_ascent_skips_unperturbed_tensors_and_stops_below_the_lowest_perturbed():
    model = small_conv_net()
    optimizer = sparse_sam_with_its_mask(model)
    x, y = batches(1)[0]
    assert ascent_with_a_probe(model, optimizer, x, y) == 0
    grads = [p.grad for p in model.parameters()]
    assert all(g is None for g in grads[:4])
    assert all(g is not None for g in grads[4:])


def test_full_norm_and_a_due_refresh_compute_every_gradient():
    model = small_conv_net()
    optimizer = sparse_sam(model, "masked")
    optimizer.set_epoch(0)
    x, y = batches(1)[0]
    # Before the first mask the refresh is due: SSAM-D's gradient score may need any entry.
    assert ascent_with_a_probe(model, optimizer, x, y) == 1
    assert len(optimizer.ascent_parameters()) == len(list(model.parameters()))
    training_step(model, optimizer, x, y)
    assert len(optimizer.ascent_parameters()) == len(list(model.parameters())) - 4

    full = sparse_sam(small_conv_net(), "full")
    full.set_epoch(0)
    full.update_mask()
    assert len(full.ascent_parameters()) == len(list(model.parameters()))


def test_the_ascent_forward_records_no_graph_below_the_lowest_perturbed_tensor():
    model = small_conv_net()
    optimizer = sparse_sam_with_its_mask(model)
    x, _ = batches(1)[0]
    with optimizer.ascent_graph():
        hidden = model[:3](x)
        logits = model[3:](hidden)
    assert not hidden.requires_grad and logits.requires_grad
    assert all(p.requires_grad for p in model.parameters())
