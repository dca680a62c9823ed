"""The real Hydra configs: every group option composes, the documented command lines work, and
every model builds from its composed config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from ssam.models import MODELS, build_model

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

GROUPS = {
    "dataset": ["fashion_mnist", "cifar10", "cifar100", "imagenet"],
    "model": ["compact_resnet", "resnet18", "wrn28_10", "resnet50", "vit_small", "vgg11_bn", "timm"],
    "optimizer": [
        "sgd",
        "sam",
        "ssam_f",
        "ssam_d",
        "looksam",
        "rst",
        "ae_sam",
        "esam",
        "sam_on",
        "msam",
        "saf",
        "ssam_f_rst",
        "ssam_f_looksam",
    ],
    "scheduler": ["cosine", "step", "constant"],
    "logger": ["console", "wandb"],
}


def compose_train_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def group_options(group: str) -> list[str]:
    """The options Hydra offers for ``group``: files under configs/ and declared ones."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def test_config_group_options_are_exactly_the_tested_options():
    offered = {group: group_options(group) for group in GROUPS}
    assert offered == {group: sorted(options) for group, options in GROUPS.items()}
    assert sorted(GROUPS["model"]) == sorted(MODELS)


def test_default_config_is_fashion_mnist_compact_resnet_sgd_cosine_console():
    cfg = compose_train_config([])
    assert (cfg.dataset.name, cfg.model.name, cfg.optimizer.name, cfg.scheduler.name, cfg.logger.name) == (
        "fashion_mnist",
        "compact_resnet",
        "sgd",
        "cosine",
        "console",
    )
    assert cfg.optimizer.lr == cfg.lr == 0.1
    assert cfg.optimizer.weight_decay == cfg.weight_decay == 5.0e-4


@pytest.mark.parametrize(
    "group, option", [(group, option) for group, options in GROUPS.items() for option in options]
)
def test_every_group_option_composes_and_resolves(group, option):
    cfg = compose_train_config([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved[group]["name"] == option


@pytest.mark.parametrize("optimizer", ["sam", "ssam_f", "ssam_d"])
def test_sharpness_aware_optimizers_inherit_sgd_settings_and_read_rho(optimizer):
    cfg = compose_train_config([f"optimizer={optimizer}", "rho=0.2", "lr=0.03"])
    assert cfg.optimizer.name == optimizer
    assert cfg.optimizer.rho == 0.2
    assert cfg.optimizer.lr == 0.03
    assert cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.bn_stats == "ascent"


DOCUMENTED_COMMAND = ["optimizer=sam", "rho=0.05", "lr=0.1", "epochs=20", "seed=1"]


@pytest.mark.parametrize(
    "extra, dataset, model",
    [
        (["dataset=cifar10", "model=resnet18"], "cifar10", "resnet18"),
        (["dataset=cifar100", "model=resnet18"], "cifar100", "resnet18"),
        (["dataset=cifar10", "model=wrn28_10"], "cifar10", "wrn28_10"),
        (["dataset=cifar100", "model=wrn28_10"], "cifar100", "wrn28_10"),
        (["dataset=imagenet", "model=resnet50"], "imagenet", "resnet50"),
        (["dataset=cifar10", "model=vit_small"], "cifar10", "vit_small"),
    ],
)
def test_documented_command_lines_compose_with_interpolated_rho_and_lr(extra, dataset, model):
    cfg = compose_train_config(DOCUMENTED_COMMAND + extra)
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.dataset.name == dataset
    assert cfg.model.name == model
    assert cfg.optimizer.name == "sam"
    assert cfg.optimizer.rho == 0.05
    assert cfg.optimizer.lr == 0.1
    assert cfg.epochs == 20
    assert cfg.seed == 1


def test_documented_command_interpolation_follows_non_default_values():
    cfg = compose_train_config(["optimizer=sam", "rho=0.5", "lr=0.01", "dataset=cifar10", "model=resnet18"])
    assert cfg.optimizer.rho == 0.5
    assert cfg.optimizer.lr == 0.01


@pytest.mark.parametrize("optimizer", ["ssam_f", "ssam_d"])
def test_sparsity_override_reaches_the_sparse_optimizer(optimizer):
    cfg = compose_train_config([f"optimizer={optimizer}", "sparsity=0.9"])
    assert cfg.optimizer.sparsity == 0.9


def test_unknown_top_level_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="foo"):
        compose_train_config(["foo=1"])


def test_unknown_key_inside_a_group_is_rejected():
    with pytest.raises(ConfigCompositionException, match="bogus_key"):
        compose_train_config(["optimizer=sam", "optimizer.bogus_key=1"])


def test_unknown_group_option_is_rejected():
    with pytest.raises(ConfigCompositionException, match="adam"):
        compose_train_config(["optimizer=adam"])


# --- models built from the composed configs ---------------------------------------------------

# (model, dataset, input size, num_classes); resnet50 gets 64×64 instead of ImageNet's 224 to stay fast.
MODEL_CASES = [
    ("compact_resnet", "cifar10", 32, 10),
    ("compact_resnet", "fashion_mnist", 28, 10),
    ("resnet18", "cifar10", 32, 10),
    ("wrn28_10", "cifar100", 32, 100),
    ("resnet50", "imagenet", 64, 1000),
    ("vit_small", "cifar10", 32, 10),
    ("vgg11_bn", "cifar10", 32, 10),
    ("vgg11_bn", "fashion_mnist", 28, 10),
    ("timm", "fashion_mnist", 28, 10),
]


def _build_from_config(cfg: DictConfig, image_size: int) -> torch.nn.Module:
    options = {key: value for key, value in OmegaConf.to_container(cfg.model).items() if key != "name"}
    return build_model(
        cfg.model.name,
        num_classes=cfg.dataset.num_classes,
        in_channels=cfg.dataset.in_channels,
        image_size=image_size,
        **options,
    )


@pytest.mark.parametrize(
    "model, dataset, size, num_classes", MODEL_CASES, ids=[f"{m}-{d}" for m, d, _, _ in MODEL_CASES]
)
def test_model_from_composed_config_gives_logits_of_the_right_shape(model, dataset, size, num_classes):
    cfg = compose_train_config([f"model={model}", f"dataset={dataset}", f"dataset.image_size={size}"])
    assert cfg.dataset.num_classes == num_classes
    torch.manual_seed(0)
    net = _build_from_config(cfg, size).eval()
    x = torch.randn(2, cfg.dataset.in_channels, size, size)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (2, num_classes)
    assert logits.dtype == torch.float32
    assert bool(torch.isfinite(logits).all())


def test_compact_resnet_widths_option_sets_the_stage_channels():
    cfg = compose_train_config(["model=compact_resnet", "model.widths=[8,16,24]"])
    net = _build_from_config(cfg, 28)
    conv_channels = {m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)}
    assert conv_channels == {8, 16, 24}
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vit_small_patch_size_option_sets_the_token_count():
    cfg = compose_train_config(["model=vit_small", "dataset=cifar10", "model.patch_size=8"])
    net = _build_from_config(cfg, 32)
    assert net.patch_embed.num_patches == (32 // 8) ** 2


def test_unknown_model_name_raises_value_error_listing_the_models():
    with pytest.raises(ValueError, match="model must be one of compact_resnet, resnet18"):
        build_model("resnet1000", num_classes=10, in_channels=3, image_size=32)


@pytest.mark.parametrize(
    "arch, dataset, size, channels",
    [
        ("resnet10t", "fashion_mnist", 28, 1),
        ("convnext_atto", "cifar10", 32, 3),
        ("vit_tiny_patch16_224", "cifar10", 32, 3),
    ],
)
def test_any_timm_architecture_builds_for_the_run_s_images(arch, dataset, size, channels):
    """num_classes and in_chans always, img_size where the architecture takes one (the ViT)."""
    cfg = compose_train_config(["model=timm", f"model.arch={arch}", f"dataset={dataset}"])
    net = _build_from_config(cfg, size).eval()
    with torch.no_grad():
        assert net(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_vit_small_is_a_preset_of_the_timm_model():
    cfg = compose_train_config(["model=vit_small"])
    assert (cfg.model.name, cfg.model.arch, cfg.model.patch_size) == ("vit_small", "vit_small_patch16_224", 4)


def test_an_unknown_timm_architecture_is_refused_with_the_closest_names():
    with pytest.raises(
        ValueError,
        match=r"model.arch must be one of timm.list_models\(\) .*got 'resnet10x'; the closest: .*resnet10t",
    ):
        build_model("timm", arch="resnet10x", num_classes=10, in_channels=1, image_size=28)
