"""The paper's two Sparse SAM methods (Mi et al., NeurIPS 2022), which differ in how the mask is
chosen: SSAM-F by the Fisher information of a sample of training examples, SSAM-D by pruning and
regrowing a dynamic mask. What they share (sparsity, granularity, the norm of ε, the refresh
schedule, the masks' records) is ``SparseSAMMethod``'s (ssam/train/kinds.py).

python train.py optimizer=ssam_f sparsity=0.5
python train.py optimizer=ssam_d sparsity=0.5 optimizer.drop_rate=0.5
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssam.errors import ConfigError
from ssam.optim import DynamicMask, FisherMask
from ssam.optim.fisher import FISHER_METHODS
from ssam.optim.masks import SCORES
from ssam.optim.ssam import MaskStrategy
from ssam.settings import POSITIVE_INT, Setting, in_range, one_of
from ssam.train.kinds import MaskContext, SparseSAMMethod


class SSAMFMethod(SparseSAMMethod):
    name = "ssam_f"
    label = "SSAM-F"
    description = "Sparse SAM with the Fisher-information mask (SSAM-F, Mi et al., 2022)"
    settings = {
        **SparseSAMMethod.settings,
        "num_samples": Setting(
            128, POSITIVE_INT, "examples in each Fisher estimate (the paper: 128 to 1024)"
        ),
        "fisher_method": Setting(
            "auto", one_of(*FISHER_METHODS), "loop (batch-1 passes), vmap (torch.func), or auto: the faster"
        ),
    }

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        optimizer = config["optimizer"]
        if config["trainer"]["sync_batchnorm"] and optimizer["fisher_method"] != "loop":
            raise ConfigError(
                "trainer.sync_batchnorm=true with optimizer=ssam_f needs optimizer.fisher_method=loop "
                f"(vmap cannot run SyncBatchNorm), got {optimizer['fisher_method']!r}"
            )
        train_size = config["dataset"]["train_size"]
        if train_size is not None and optimizer["num_samples"] > train_size:
            raise ConfigError(
                f"optimizer.num_samples ({optimizer['num_samples']}) is larger than dataset.train_size ({train_size})"
            )

    @classmethod
    def build_mask(cls, context: MaskContext, values: Mapping[str, Any]) -> MaskStrategy:
        return FisherMask(
            context.model,
            context.train_set,
            num_samples=values["num_samples"],
            update_freq=values["update_freq"],
            method=values["fisher_method"],
            seed=context.seed,
            selection=context.selection,
        )


class SSAMDMethod(SparseSAMMethod):
    name = "ssam_d"
    label = "SSAM-D"
    description = "Sparse SAM with the dynamic sparse mask (SSAM-D, Mi et al., 2022)"
    settings = {
        **SparseSAMMethod.settings,
        "drop_rate": Setting(
            0.5, in_range(0.0, 1.0), "d₀ of the cosine drop-rate schedule d(e) = d₀(1 + cos(πe/T))/2"
        ),
        "drop": Setting("gradient", one_of(*SCORES), "score whose lowest active entries are dropped"),
        "growth": Setting("random", one_of(*SCORES), "score whose highest inactive entries are grown"),
    }
    summary_settings = ("drop_rate",)

    @classmethod
    def build_mask(cls, context: MaskContext, values: Mapping[str, Any]) -> MaskStrategy:
        return DynamicMask(
            total_epochs=context.epochs,
            drop_rate=values["drop_rate"],
            update_freq=values["update_freq"],
            drop=values["drop"],
            growth=values["growth"],
            seed=context.seed,
            selection=context.selection,
        )
