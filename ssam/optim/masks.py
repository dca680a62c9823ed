"""How Sparse SAM chooses which weights to perturb: the mask strategies of SSAM-F and SSAM-D.

A mask is a list of bool tensors, one per parameter, with True where the weight is perturbed.
Sparsity s is the fraction of False entries; every strategy keeps exactly
``active_count(N, s)`` entries on, chosen globally across all parameters.

A strategy is called by ``SSAM`` as ``strategy(params, masks, sparsity, epoch)`` and returns
the new masks; ``masks`` is None the first time. Given a ``TensorSelection`` (``selection``), a
strategy chooses whole tensors by the same scores instead (ssam.optim.tensor_selection), and
keeps at most N·(1−s) entries on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ssam.optim.fisher import LossFn, fisher_scores, resolve_fisher_method
from ssam.optim.tensor_selection import TensorSelection, masks_of

SCORES = ("gradient", "weight", "random")


def active_count(num_entries: int, sparsity: float) -> int:
    """k = N·(1−s), rounded to the nearest whole entry."""
    return int(round(num_entries * (1.0 - sparsity)))


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    pieces = torch.split(flat, [t.numel() for t in like])
    return [piece.view(t.shape).to(t.device) for piece, t in zip(pieces, like)]


def _highest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest scores; among equal scores the lower index wins.

    Selection by the count-th largest value (kthvalue, linear time) rather than a full sort:
    7× faster on ResNet-18's 11M scores, and ties resolved by position, which topk does not do.
    """
    total = scores.numel()
    scores = torch.nan_to_num(scores, nan=float("-inf"))  # a NaN score ranks last, never lost
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    if count >= total:
        return torch.arange(total, device=scores.device)
    threshold = torch.kthvalue(scores, total - count + 1).values
    above = (scores > threshold).nonzero().squeeze(1)
    ties = (scores == threshold).nonzero().squeeze(1)[: count - above.numel()]
    return torch.cat([above, ties])


def global_topk_mask(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Mask keeping the N·(1−s) highest scores across all tensors (ties: first entries win)."""
    flat = _flatten([s.detach().to(scores[0].device) for s in scores])
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[_highest(flat, active_count(flat.numel(), sparsity))] = True
    return _unflatten(keep, scores)


def mask_from_scores(
    scores: list[torch.Tensor], params: list[torch.Tensor], sparsity: float, selection: TensorSelection | None
) -> list[torch.Tensor]:
    """The mask of per-entry ``scores`` (one tensor per parameter): the N·(1−s) highest entries
    across all tensors, or with a ``selection``, whole tensors by their reduced scores within
    the same budget of entries."""
    if selection is None:
        return global_topk_mask(scores, sparsity)
    sizes = [p.numel() for p in params]
    budget = active_count(sum(sizes), sparsity)
    return masks_of(selection.choose(selection.tensor_scores(scores), sizes, budget), params)


def _check_update_freq(update_freq: int) -> None:
    if not (isinstance(update_freq, int) and update_freq >= 1):
        raise ValueError(f"update_freq must be an integer >= 1, got {update_freq!r}")


class FisherMask:
    """SSAM-F: perturb the weights with the largest empirical Fisher information.

    Every ``update_freq`` epochs (and before the first step) it draws ``num_samples`` examples
    from ``dataset`` with its own generator, seeded by (``seed``, epoch), so the draw neither
    consumes nor depends on the training loader's randomness, and computes F̂ exactly
    (ssam.optim.fisher). The paper's code starts from an all-zero mask; this one computes the
    first mask before the first step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: Dataset,
        *,
        num_samples: int = 128,
        update_freq: int = 1,
        method: str = "auto",
        loss_fn: LossFn = F.cross_entropy,
        seed: int = 0,
        chunk_size: int = 32,
        selection: TensorSelection | None = None,
    ) -> None:
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if num_samples > len(dataset):
            raise ValueError(
                f"num_samples ({num_samples}) is larger than the dataset ({len(dataset)} examples)"
            )
        _check_update_freq(update_freq)
        resolve_fisher_method(method, torch.device("cpu"))
        self.model = model
        self.dataset = dataset
        self.num_samples = num_samples
        self.update_freq = update_freq
        self.method = method
        self.loss_fn = loss_fn
        self.seed = seed
        self.chunk_size = chunk_size
        self.selection = selection
        self._check_batch_of_one()

    def is_due(self, epoch: int) -> bool:
        return epoch % self.update_freq == 0

    def samples(self, epoch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples of this epoch's refresh, the same on every process and every resume."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        indices = torch.randperm(len(self.dataset), generator=generator)[: self.num_samples]
        return self._examples(indices.tolist(), device)

    def _examples(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # The dataset's transforms draw from the global RNG; keep the caller's stream intact.
        with torch.random.fork_rng(devices=[]):
            examples = [self.dataset[i] for i in indices]
        inputs = torch.stack([torch.as_tensor(x) for x, _ in examples]).to(device)
        targets = torch.as_tensor([int(y) for _, y in examples], device=device)
        return inputs, targets

    def _check_batch_of_one(self) -> None:
        """Fail now, not at the first step, if the model cannot take one example in training
        mode (e.g. a BatchNorm that sees a single value per channel)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        inputs, targets = self._examples([0], params[0].device)
        try:
            fisher_scores(self.model, params, inputs, targets, method="loop", loss_fn=self.loss_fn)
        except (ValueError, RuntimeError) as error:
            raise ValueError(
                "SSAM-F's Fisher pass feeds the model one example at a time in training mode, "
                f"and this model cannot take that: {error}. Use larger images or another model"
            ) from error

    def __call__(self, params, masks, sparsity: float, epoch: int) -> list[torch.Tensor]:
        inputs, targets = self.samples(epoch, params[0].device)
        scores = fisher_scores(
            self.model,
            params,
            inputs,
            targets,
            method=self.method,
            loss_fn=self.loss_fn,
            chunk_size=self.chunk_size,
        )
        return mask_from_scores(scores, params, sparsity, self.selection)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DynamicMask:
    """SSAM-D: a random mask that is pruned and regrown every ``update_freq`` epochs.

    At epoch e the drop rate is d(e) = d₀ · (1 + cos(π e / T)) / 2. Of the k = N·(1−s) active
    entries, the n = round(d(e)·k) with the lowest ``drop`` score are switched off, and the n
    entries with the highest ``growth`` score among those that were off are switched on, so
    exactly k stay active (n is capped at N − k, where the paper's code would lose entries).
    Scores: ``gradient`` |g| (the current ascent gradient), ``weight`` |w|, ``random``.
    All random draws use the strategy's own generator, saved in its state_dict.
    """

    def __init__(
        self,
        *,
        total_epochs: int,
        drop_rate: float = 0.5,
        update_freq: int = 1,
        drop: str = "gradient",
        growth: str = "random",
        seed: int = 0,
        selection: TensorSelection | None = None,
    ) -> None:
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate}")
        for name, value in (("drop", drop), ("growth", growth)):
            if value not in SCORES:
                raise ValueError(f"{name} must be one of {', '.join(SCORES)}, got {value!r}")
        if not (isinstance(total_epochs, int) and total_epochs >= 1):
            raise ValueError(f"total_epochs must be an integer >= 1, got {total_epochs!r}")
        _check_update_freq(update_freq)
        self.total_epochs = total_epochs
        self.drop_rate = drop_rate
        self.update_freq = update_freq
        self.drop = drop
        self.growth = growth
        self.selection = selection
        self.generator = torch.Generator().manual_seed(seed)

    def drop_rate_at(self, epoch: int) -> float:
        return self.drop_rate * (1.0 + math.cos(math.pi * epoch / self.total_epochs)) / 2.0

    def is_due(self, epoch: int) -> bool:
        return epoch > 0 and epoch % self.update_freq == 0

    def _scores(self, kind: str, params: list[torch.Tensor]) -> torch.Tensor:
        if kind == "random":
            return torch.rand(sum(p.numel() for p in params), generator=self.generator)
        if kind == "weight":
            return _flatten([p.detach().abs().cpu() for p in params])
        return _flatten(
            [torch.zeros(p.shape) if p.grad is None else p.grad.detach().abs().cpu() for p in params]
        )

    def __call__(self, params, masks, sparsity: float, epoch: int) -> list[torch.Tensor]:
        if self.selection is not None:
            return self._whole_tensors(params, masks, sparsity, epoch)
        total = sum(p.numel() for p in params)
        active = active_count(total, sparsity)
        if masks is None:
            keep = torch.zeros(total, dtype=torch.bool)
            keep[torch.randperm(total, generator=self.generator)[:active]] = True
            return _unflatten(keep, params)
        keep = _flatten([m.cpu() for m in masks])
        changed = min(int(round(self.drop_rate_at(epoch) * active)), active, total - active)
        on = keep.nonzero().squeeze(1)
        off = (~keep).nonzero().squeeze(1)
        dropped = on[_highest(-self._scores(self.drop, params)[on], changed)]
        grown = off[_highest(self._scores(self.growth, params)[off], changed)]
        keep[dropped] = False
        keep[grown] = True
        return _unflatten(keep, params)

    def _tensor_scores(self, kind: str, params: list[torch.Tensor]) -> list[float]:
        if kind == "random":
            # One draw per tensor, weighted by its size under "sum" as a sum over its entries
            # would be, so that a random choice fills the entry budget rather than collecting
            # the many one-row BatchNorm tensors.
            draws = torch.rand(len(params), generator=self.generator).tolist()
            if self.selection.reduce == "mean":
                return draws
            return [draw * p.numel() for draw, p in zip(draws, params)]
        return self.selection.tensor_scores(
            torch.split(self._scores(kind, params), [p.numel() for p in params])
        )

    def _whole_tensors(self, params, masks, sparsity: float, epoch: int) -> list[torch.Tensor]:
        """The same rule on whole tensors: drop the active tensors with the lowest drop score
        until d(e)·(active entries) entries are off, then grow by growth score with the
        selection's rule, up to the budget. Unlike entries, tensors are few and of very
        different sizes, so growth may pick a tensor just dropped: excluding it could leave
        nothing that fits and the mask ever sparser."""
        sizes = [p.numel() for p in params]
        budget = active_count(sum(sizes), sparsity)
        if masks is None:
            return masks_of(
                self.selection.choose(self._tensor_scores("random", params), sizes, budget), params
            )
        active = {i for i, m in enumerate(masks) if bool(m.any())}
        to_drop = round(self.drop_rate_at(epoch) * sum(sizes[i] for i in active))
        drop_scores = self._tensor_scores(self.drop, params)
        dropped: set[int] = set()
        for i in sorted(active, key=lambda i: (drop_scores[i], i)):
            if sum(sizes[j] for j in dropped) >= to_drop:
                break
            dropped.add(i)
        growth_scores = self._tensor_scores(self.growth, params)
        chosen = self.selection.choose(growth_scores, sizes, budget, chosen=active - dropped)
        return masks_of(chosen, params)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
