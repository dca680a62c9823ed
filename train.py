"""Train an image classifier with SGD, SAM or Sparse SAM (SSAM-F, SSAM-D).

python train.py                                   # Fashion-MNIST, compact ResNet, SGD
python train.py optimizer=ssam_f sparsity=0.5     # Sparse SAM with the Fisher mask
python train.py -m optimizer=sam,ssam_f seed=1,2  # a sweep
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ssam.train.checkpoint import CheckpointError
from ssam.train.run import run
from ssam.train.validate import ConfigError


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        summary = run(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    return summary["final_test_acc"]


if __name__ == "__main__":
    main()
