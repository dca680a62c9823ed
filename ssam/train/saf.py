"""SAF (Du, Zhou, Feng, Tan and Zhou, NeurIPS 2022, "Sharpness-Aware Training for Free"): SGD with
one pass per step, on the cross-entropy plus a trajectory loss that holds each example's
prediction near the one the model made for it Ē epochs before. A sharp minimum is one the loss
drops into fast; the trajectory loss, the change of the outputs along the weights' path, charges
for that drop, as SAM's sharpness term does, without SAM's second pass.

In epoch e (0-based) from E_start on, the step on a batch B minimises

    L(w) = CE_B(w) + λ·τ²·(1/|B|)·Σ_{i∈B} KL( softmax(z_i^(e−Ē)/τ) ‖ softmax(f_w(x_i)/τ) )

where z_i^(e') are the logits the training pass of epoch e' computed for example i (at that
step's weights, before its update, on that epoch's augmented image), kept detached. Before
E_start, and with λ = 0, the step is SGD's. Every step writes its batch's logits to a table of
Ē + 1 epochs × N examples × C classes; data-parallel, every process writes every process's batch
(one all-gather a step), as the next epochs deal the examples out to the processes afresh.

Source: the authors' code, AngusDujw/SAF, ``SAF_train.py``. docs/method.md#saf has the defaults,
the memory it takes and where we differ from it.

python train.py optimizer=saf optimizer.trajectory_weight=0.3 optimizer.past_epochs=3
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ssam.errors import ConfigError
from ssam.settings import NON_NEGATIVE_INT, POSITIVE_INT, Setting, above, at_least
from ssam.train.kinds import KEY_EQUALS_VALUE, Method, RunContext, SettingValues
from ssam.train.passes import Passes, StepResult
from ssam.train.progress import Metric, Total, ratio
from ssam.train.steps import sgd_step

# The totals a step with the trajectory loss adds to its epoch's (ssam/train/progress.py).
TRAJECTORY_LOSS_SUM = "trajectory_loss_sum"
TRAJECTORY_EXAMPLES = "trajectory_examples"


def trajectory_loss(logits: torch.Tensor, past_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·(1/n)·Σ_i KL(softmax(z_i^past/τ) ‖ softmax(z_i/τ)) over the n rows, in the dtype of
    ``past_logits`` (float32 under mixed precision)."""
    current = F.log_softmax(logits.to(past_logits.dtype) / temperature, dim=1)
    past = F.softmax(past_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(current, past, reduction="batchmean")


class PastLogits:
    """Every training example's logits in each of the last Ē + 1 epochs: epoch e's in slot
    e mod (Ē + 1), so that epoch e − Ē's are read while epoch e's are written. Made at the first
    use, on the logits' device, in float32 (float64 for a float64 model); an entry never
    written holds zeros, the uniform distribution."""

    def __init__(self, num_examples: int, past_epochs: int) -> None:
        self.num_examples = num_examples
        self.past_epochs = past_epochs
        self.table: torch.Tensor | None = None  # (Ē + 1) × N × C

    def _table_for(self, logits: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            dtype = torch.promote_types(logits.dtype, torch.float32)
            shape = (self.past_epochs + 1, self.num_examples, logits.shape[1])
            self.table = torch.zeros(shape, dtype=dtype, device=logits.device)
        elif self.table.device != logits.device:  # a checkpoint's, loaded on the CPU
            self.table = self.table.to(logits.device)
        return self.table

    def read(self, epoch: int, positions: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Epoch ``epoch`` − Ē's logits of the examples at ``positions``, beside this epoch's
        ``logits`` of them."""
        table = self._table_for(logits)
        return table[(epoch - self.past_epochs) % len(table)][positions]

    def write(self, epoch: int, positions: torch.Tensor, logits: torch.Tensor) -> None:
        table = self._table_for(logits)
        table[epoch % len(table)].index_copy_(0, positions, logits.to(table.dtype))


class SAFMethod(Method):
    """SAF: SGD on the cross-entropy plus λ × the trajectory loss from epoch ``start_epoch`` on.
    One pass per step. Its recorded ``train_loss`` is the cross-entropy alone, as every
    method's; ``trajectory_loss`` is the epoch's mean of the term λ multiplies."""

    name = "saf"
    label = "SAF"
    description = "SAF (Du et al., 2022): SGD plus a KL to each example's logits of Ē epochs before; one pass"
    settings = {
        **Method.settings,
        "trajectory_weight": Setting(
            0.3, at_least(0), "λ: weight of the trajectory loss (0: SGD)", variant=KEY_EQUALS_VALUE
        ),
        "temperature": Setting(
            5.0, above(0), "τ: temperature of both softmaxes of the trajectory loss", variant=KEY_EQUALS_VALUE
        ),
        "past_epochs": Setting(
            3,
            POSITIVE_INT,
            "Ē: compare with each example's logits from this many epochs before",
            variant=KEY_EQUALS_VALUE,
        ),
        "start_epoch": Setting(
            6,
            NON_NEGATIVE_INT,
            "first epoch (0-based) with the trajectory loss; at least past_epochs",
            variant=KEY_EQUALS_VALUE,
        ),
    }
    totals = (
        Total(TRAJECTORY_LOSS_SUM, float, per_process=True),
        Total(TRAJECTORY_EXAMPLES, int, per_process=True),
    )
    metrics = (
        # The mean over the epoch's examples of τ²·KL (None before start_epoch).
        Metric(
            "trajectory_loss",
            lambda _, totals: ratio(totals[TRAJECTORY_LOSS_SUM], totals[TRAJECTORY_EXAMPLES]),
        ),
    )

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        optimizer = config["optimizer"]
        start, past = optimizer["start_epoch"], optimizer["past_epochs"]
        if start < past:
            raise ConfigError(
                f"optimizer.start_epoch ({start}) must be at least optimizer.past_epochs ({past}): the "
                "trajectory loss compares with each example's logits of past_epochs epochs before, "
                "which exist from epoch past_epochs on"
            )
        if start >= config["epochs"]:
            raise ConfigError(
                f"optimizer.start_epoch ({start}) must be below epochs ({config['epochs']}), counting "
                "from 0: the trajectory loss would never be added, and the run would be SGD's"
            )

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        if run.batch_positions is None:
            raise TypeError(
                "optimizer=saf keeps logits per training example: its RunContext needs "
                "batch_positions, the examples of each step's batch"
            )
        super().__init__(values, run)
        self.past_logits = PastLogits(len(run.train_set), self.values["past_epochs"])

    def trajectory_loss_on(self, epoch: int) -> bool:
        return self.values["trajectory_weight"] > 0 and epoch >= self.values["start_epoch"]

    def step(self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int) -> StepResult:
        epoch = index // self.run.steps_per_epoch
        positions = self.run.batch_positions(index).to(targets.device)
        loss_on = self.trajectory_loss_on(epoch)
        weight, temperature = self.values["trajectory_weight"], self.values["temperature"]
        seen, losses = [], []  # each micro-batch's logits, and its trajectory loss × its size

        def weighted_trajectory_loss(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            seen.append(logits.detach())
            if not loss_on:
                return logits.new_zeros(())
            loss = trajectory_loss(logits, self.past_logits.read(epoch, positions[rows], logits), temperature)
            losses.append(loss.detach().double() * (rows.stop - rows.start))
            return weight * loss

        result = sgd_step(passes, self.optimizer, inputs, targets, extra_loss=weighted_trajectory_loss)
        # Only once the step went through: a failed pass's logits may be non-finite.
        replicas = self.run.replicas
        self.past_logits.write(epoch, replicas.gather(positions), replicas.gather(torch.cat(seen)))
        if loss_on:
            result.totals = {
                TRAJECTORY_LOSS_SUM: torch.stack(losses).sum(),
                TRAJECTORY_EXAMPLES: len(targets),
            }
        return result

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "past_logits": self.past_logits.table}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.past_logits.table = state["past_logits"]
