"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) and its adaptive variant ASAM.

One SAM step on a batch B, with base optimizer O (SGD with momentum, weight decay inside O):

    g  = ∇L_B(w)                            ascent pass, run by the caller
    ε  = ρ · g / (‖g‖₂ + 1e-12)             first_step: climb to w + ε
    g' = ∇L_B(w + ε)                        descent pass, run by the caller
    w  ← w  (restored by copy), O.step(g')   second_step

With ``adaptive=True`` (ASAM, Kwon et al., 2021) the ascent is taken in the space scaled by
T_w = |w|: ε = ρ · T_w² g / ‖T_w g‖.

The interface is that of the widely used davda54/sam, so it drops into existing loops:

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    loss_fn(model(x), y).backward()
    optimizer.second_step(zero_grad=True)

``optimizer.ascent_backward(loss)`` in place of the first ``backward()`` computes only the
gradients that ``first_step`` uses: for SAM all of them, for Sparse SAM those of the tensors
its mask perturbs, which lets autograd stop below the lowest of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim import Optimizer

# Keeps ε finite when the gradient vanishes; the value the paper's and SAM's code use.
NORM_EPS = 1e-12


class SAM(Optimizer):
    """Wraps a base optimizer (``base_optimizer`` is its class) and makes it sharpness-aware.

    The base optimizer shares this optimizer's ``param_groups``, so learning-rate schedulers
    attached to either see the same groups, and ``state_dict()`` carries the base optimizer's
    state (momentum buffers) so that a resumed run continues exactly.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        if not rho >= 0.0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        # w before the climb, per parameter: buffers reused from step to step.
        self._origins: dict[torch.Tensor, torch.Tensor] = {}
        self._perturbed: list[torch.Tensor] = []
        self.last_perturbation_norm = torch.zeros(())

    @property
    def refreshes_mask(self) -> bool:
        """Whether the next ``first_step`` refreshes a mask from the gradient (Sparse SAM): a
        step then checks its ascent pass before the climb, not after the descent."""
        return False

    def ascent_parameters(self) -> list[torch.Tensor]:
        """The parameters whose ascent gradient the next ``first_step`` reads."""
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    @contextmanager
    def ascent_graph(self) -> Iterator[None]:
        """Around the ascent's forward pass: inside, the parameters outside
        ``ascent_parameters()`` do not require gradients, so autograd builds no graph and keeps
        no activations for the layers below the lowest perturbed tensor."""
        wanted = {id(p) for p in self.ascent_parameters()}
        frozen = [
            p
            for group in self.param_groups
            for p in group["params"]
            if p.requires_grad and id(p) not in wanted
        ]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def ascent_backward(self, loss: torch.Tensor) -> None:
        """The ascent pass's backward: gradients of ``loss`` into ``.grad`` for
        ``ascent_parameters()`` only. Autograd then skips every weight gradient outside that set
        and stops below the lowest tensor in it, which is where Sparse SAM saves time."""
        params = self.ascent_parameters()
        if params:
            loss.backward(inputs=params)

    def _restrict_(self, perturbation: torch.Tensor, param: torch.Tensor) -> None:
        """Zero, in place, the entries of ``param``'s ε that must stay unperturbed (Sparse SAM)."""

    def _is_perturbed(self, param: torch.Tensor) -> bool:
        """Whether ε can be non-zero on ``param``; Sparse SAM leaves out fully masked tensors."""
        return param.grad is not None

    @torch.no_grad()
    def _scaled_norm(
        self,
        direction: Callable[[torch.Tensor], torch.Tensor],
        include: Callable[[torch.Tensor], bool],
    ) -> torch.Tensor:
        """‖T_w · direction(w)‖₂ over the parameters ``include`` accepts (T_w = 1 unless adaptive)."""
        norms = [
            ((torch.abs(p) if group["adaptive"] else 1.0) * direction(p)).norm(p=2)
            for group in self.param_groups
            for p in group["params"]
            if include(p)
        ]
        if not norms:
            return torch.zeros(())
        return torch.stack([n.to(norms[0].device) for n in norms]).norm(p=2)

    def _perturbation_denominator(self) -> torch.Tensor:
        """What ρ is divided by: the norm of the full (scaled) gradient, as in SAM."""
        return self._scaled_norm(lambda p: p.grad, lambda p: p.grad is not None)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Climb to w + ε, remembering w exactly."""
        denominator = self._perturbation_denominator()
        self._perturbed = []
        perturbation_norms = []
        for group in self.param_groups:
            scale = group["rho"] / (denominator + NORM_EPS)
            for p in group["params"]:
                if not self._is_perturbed(p):
                    continue
                self._remember_origin(p)
                # ε = ρ·T_w²·g/‖·‖ in one new buffer: this runs over every weight at every step.
                if group["adaptive"]:
                    e_w = torch.pow(p, 2).mul_(p.grad).mul_(scale.to(p))
                else:
                    e_w = p.grad * scale.to(p)
                self._restrict_(e_w, p)
                p.add_(e_w)
                perturbation_norms.append(e_w.norm(p=2))
        if perturbation_norms:
            device = perturbation_norms[0].device
            self.last_perturbation_norm = torch.stack([n.to(device) for n in perturbation_norms]).norm(p=2)
        else:  # nothing perturbed (an empty mask): ε = 0, not the last step's
            self.last_perturbation_norm = torch.zeros(())
        if zero_grad:
            self.zero_grad()

    def _remember_origin(self, param: torch.Tensor) -> None:
        origin = self._origins.get(param)
        if origin is None:
            self._origins[param] = param.detach().clone()
        else:
            origin.copy_(param)
        self._perturbed.append(param)

    @torch.no_grad()
    def restore_weights(self) -> None:
        """Go back from w + ε to w, bit for bit (a copy, not a subtraction)."""
        for p in self._perturbed:
            p.copy_(self._origins[p])
        self._perturbed = []

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Go back to w and take the base optimizer's step with the gradient g' at w + ε."""
        self.restore_weights()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """One SAM step; the ascent gradient must already be in ``.grad``.

        ``closure`` runs the descent pass: zero nothing, compute the loss at w + ε, call
        ``backward()`` and return the loss.
        """
        if closure is None:
            raise RuntimeError(
                "SAM.step needs a closure that runs the descent forward-backward pass, "
                "or call first_step() and second_step() around it yourself"
            )
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise ValueError(
                "this state_dict has no 'base_optimizer' entry: it was not saved by SAM.state_dict()"
            )
        base_state = state_dict.pop("base_optimizer")
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base_state)
        self.param_groups = self.base_optimizer.param_groups
