"""Tensor-granular masks: whole parameter tensors perturbed or not.

An element-wise mask (the paper's) leaves a few entries on in nearly every tensor, so the
ascent still needs nearly every weight gradient. A tensor-granular mask lets the ascent skip
whole gradients and stop its backward early (ssam.optim.backward_cost), at the price of a
coarser choice. Each tensor gets a score (its entries' Fisher or SSAM-D scores, summed or
averaged), and the selection S maximises the score it holds

    Σ_{t∈S} score_t   subject to   Σ_{t∈S} size_t ≤ N·(1−s)   and   cost(S) ≤ ascent_cost · cost(all)

where cost is the ascent backward's estimated work. The backward's depth is shared by every
tensor above it, so the search runs over the depths where the backward could stop: for each,
the tensors at or above it are taken in score order while they fit both budgets, and the
depth whose selection holds the most score wins (the shallower one on a tie). ``ascent_cost = 1``
is a plain fill by score; lower values trade fidelity for speed. ``"auto"`` is half the density,
(1 − s)/2: the sparser the mask, the cheaper its ascent; at s = 0 no budget applies, so that
sparsity 0 is SAM. Both budgets are ceilings, so the density is ≤ 1 − s.
"""

from __future__ import annotations

import torch

from ssam.optim.backward_cost import BackwardCost

TENSOR_SCORES = ("sum", "mean")


class TensorSelection:
    """Chooses whole tensors by score, within a budget of entries and of backward cost."""

    def __init__(
        self, *, reduce: str = "sum", cost: BackwardCost | None = None, ascent_cost: float | str = 1.0
    ) -> None:
        if reduce not in TENSOR_SCORES:
            raise ValueError(f"tensor_score must be one of {', '.join(TENSOR_SCORES)}, got {reduce!r}")
        if not (ascent_cost == "auto" or isinstance(ascent_cost, (int, float)) and 0.0 < ascent_cost <= 1.0):
            raise ValueError(f"ascent_cost must be 'auto' or in (0, 1], got {ascent_cost!r}")
        if ascent_cost != 1.0 and cost is None:
            raise ValueError(
                "ascent_cost other than 1 needs a BackwardCost (ssam.optim.estimate_backward_cost)"
            )
        self.reduce = reduce
        self.cost = cost
        self.ascent_cost = ascent_cost

    def tensor_scores(self, entry_scores: list[torch.Tensor]) -> list[float]:
        """One score per tensor: the sum or the mean of its entries' scores (NaN counts as 0)."""
        reduced = [torch.nan_to_num(s.detach().double(), nan=0.0) for s in entry_scores]
        return [float(s.sum() if self.reduce == "sum" else s.mean()) for s in reduced]

    def choose(
        self,
        scores: list[float],
        sizes: list[int],
        budget: int,
        *,
        chosen: set[int] | None = None,
        excluded: set[int] | None = None,
    ) -> set[int]:
        """Indices of the tensors to perturb: ``chosen`` (kept whatever they cost) plus those
        the rule in the module docstring adds, never one of ``excluded``; ties in score go to
        the lower index."""
        chosen = set(chosen or ())
        candidates = [i for i in range(len(scores)) if i not in chosen and i not in (excluded or ())]
        candidates.sort(key=lambda i: (-scores[i], i))
        density = budget / sum(sizes)
        limit = (0.5 * density if density < 1.0 else 1.0) if self.ascent_cost == "auto" else self.ascent_cost
        if limit >= 1.0:
            return self._fill(chosen, candidates, sizes, budget)
        best, best_score = chosen, sum(scores[i] for i in chosen)
        for depth in sorted({self.cost.position[i] for i in candidates}, reverse=True):
            above = [i for i in candidates if self.cost.position[i] >= depth]
            selection = self._fill(chosen, above, sizes, budget, limit=limit, depth=depth)
            score = sum(scores[i] for i in selection)
            if score > best_score:
                best, best_score = selection, score
        return best

    def _fill(
        self,
        chosen: set[int],
        ranked: list[int],
        sizes: list[int],
        budget: int,
        *,
        limit: float = 1.0,
        depth: int | None = None,
    ) -> set[int]:
        """``chosen`` plus each of ``ranked`` in turn that fits the entries and, with a
        ``depth``, the cost (``limit`` of the full backward) left once the backward reaches it."""
        selection = set(chosen)
        room = budget - sum(sizes[i] for i in chosen)
        cost_room = float("inf")
        if depth is not None:
            cost_room = limit * self.cost.full - self.cost.of(chosen, depth)
        for i in ranked:
            weight_grad = self.cost.weight_grad[i] if depth is not None else 0.0
            if sizes[i] <= room and weight_grad <= cost_room:
                selection.add(i)
                room -= sizes[i]
                cost_room -= weight_grad
        return selection


def masks_of(chosen: set[int], params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Whole-tensor masks: all True for the chosen tensors, all False for the rest."""
    return [torch.full(p.shape, i in chosen, dtype=torch.bool, device=p.device) for i, p in enumerate(params)]
