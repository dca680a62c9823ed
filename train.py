"""Train an image classifier with SGD, SAM or Sparse SAM (SSAM-F, SSAM-D).

python train.py                                   # Fashion-MNIST, compact ResNet, SGD
python train.py optimizer=ssam_f sparsity=0.5     # Sparse SAM with the Fisher mask
python train.py -m optimizer=sam,ssam_f seed=1,2  # a sweep
torchrun --nproc_per_node=4 train.py optimizer=sam  # data-parallel on 4 GPUs (README: multi-node)
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import ssam.train.resolvers  # noqa: F401  (registers the configs' resolvers and declared groups)
from ssam.data import DataError
from ssam.errors import ConfigError
from ssam.extensions import load_extensions
from ssam.train.checkpoint import CheckpointError, RunDirectoryBusy
from ssam.train.distributed import hydra_overrides_for_this_process
from ssam.train.overrides import extensions_in, unknown_key_message
from ssam.train.run import TrainingStopped, run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        summary = run(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RunDirectoryBusy as error:
        print(f"skipped: {error}", file=sys.stderr)
        return float("nan")
    except TrainingStopped as error:
        print(f"stopped: {error}", file=sys.stderr)
        sys.exit(3)
    return summary["final_test_acc"]


def _check_command_line(arguments: list[str]) -> None:
    """Import the extensions named on the command line, so that Hydra finds their options,
    and refuse an unknown key (exit code 2)."""
    config_dir = Path(__file__).resolve().parent / "configs"
    try:
        load_extensions(extensions_in(arguments, config_dir))
        message = unknown_key_message(arguments, config_dir)
    except ConfigError as error:
        message = str(error)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _check_command_line(sys.argv[1:])
    sys.argv += hydra_overrides_for_this_process()
    main()
