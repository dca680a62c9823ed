"""The declarations of the methods, datasets and models, and what is derived from them: Hydra's
config groups, the checks, the settings sweeps ignore, the variants tables tell apart, and the
settings reference of docs/settings.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import batches, small_conv_net
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from ssam.analyze import analysis_batches
from ssam.data.catalog import DATASETS, DatasetSpec
from ssam.models.catalog import MODELS
from ssam.optim import SAM
from ssam.reference import with_reference
from ssam.registry import ignored_settings
from ssam.settings import BOOLEAN, Setting, above, check_section
from ssam.train.errors import ConfigError
from ssam.train.loop import training_step
from ssam.train.methods import (
    METHODS,
    SHARPNESS_AWARE,
    SPARSE,
    MethodSpec,
    base_sgd_options,
    build_mask_strategy,
    build_optimizer,
    run_variant,
)
from ssam.train.overrides import extensions_in

REPO = Path(__file__).resolve().parents[1]


def compose_with(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_the_settings_reference_in_docs_is_the_one_the_declarations_write():
    text = (REPO / "docs" / "settings.md").read_text()
    assert with_reference(text) == text, "run: python -m ssam.reference --write docs/settings.md"


@pytest.mark.parametrize("group, table", [("optimizer", METHODS), ("dataset", DATASETS), ("model", MODELS)])
def test_each_declaration_is_its_group_s_option_with_its_defaults(group, table):
    for name, declaration in table.items():
        section = compose_with([f"{group}={name}"])[group]
        assert list(section) == ["name", *declaration.settings]
        for key, setting in declaration.settings.items():
            assert OmegaConf.to_container(section, resolve=False)[key] == setting.default


@pytest.mark.parametrize("name", list(METHODS))
def test_every_declared_method_builds_from_its_config_and_takes_a_step(name):
    settings = OmegaConf.to_container(compose_with([f"optimizer={name}"]).optimizer, resolve=True)
    settings.pop("name")
    model = small_conv_net()
    data = torch.utils.data.TensorDataset(*batches(1, size=16)[0])
    mask = None
    if METHODS[name].kind is SPARSE:
        fisher = {"num_samples": 4} if name == "ssam_f" else {}
        mask = build_mask_strategy(name, model, data, epochs=1, seed=0, **{**settings, **fisher})
    optimizer = build_optimizer(name, model, mask_strategy=mask, **settings)
    if mask is not None:
        optimizer.set_epoch(0)
    before = [p.detach().clone() for p in model.parameters()]
    training_step(model, optimizer, *batches(1)[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_settings_a_method_ignores_are_the_top_level_ones_it_does_not_read():
    assert ignored_settings("sgd") == {"rho", "sparsity"}
    assert ignored_settings("sam") == {"sparsity"}
    assert ignored_settings("ssam_f") == ignored_settings("ssam_d") == set()


def test_build_optimizer_needs_the_settings_that_read_top_level_ones_and_defaults_the_rest():
    with pytest.raises(TypeError, match="optimizer 'sam' needs weight_decay, rho"):
        build_optimizer("sam", small_conv_net(), lr=0.1)
    optimizer = build_optimizer("sam", small_conv_net(), lr=0.1, weight_decay=0.0, rho=0.05)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    with pytest.raises(TypeError, match="optimizer 'sgd' has no setting rho"):
        build_optimizer("sgd", small_conv_net(), lr=0.1, weight_decay=0.0, rho=0.05)


@pytest.mark.parametrize(
    "summary, variant",
    [
        ({"optimizer": "ssam_f", "granularity": "element", "norm": "full"}, ""),
        ({"optimizer": "ssam_f", "granularity": "tensor", "norm": "masked"}, "tensor, masked norm"),
        ({"optimizer": "sam", "sam_from": 0.5, "m": None, "amp": "bf16"}, "sam_from=0.5, amp=bf16"),
        ({"optimizer": "sam", "perturbation": "local"}, ""),
        ({"optimizer": "sam", "perturbation": "local", "world_size": 2}, "perturbation=local"),
        ({"optimizer": "sam", "adaptive": True}, "adaptive=True"),
        ({"optimizer": "unknown_method", "amp": "fp16"}, "amp=fp16"),
    ],
)
def test_a_run_s_variant_names_its_variant_settings_away_from_their_defaults(summary, variant):
    assert run_variant(summary) == variant


def test_a_key_the_declaration_lacks_is_refused_naming_the_settings():
    cfg = compose_with(["optimizer=sam", "+optimizer.sparsity=0.5"])
    with pytest.raises(
        ConfigError, match="optimizer.sparsity is not a setting of optimizer=sam; its settings: lr,"
    ):
        check_section("optimizer", cfg.optimizer, METHODS["sam"].settings, accepts_more=False)


def test_a_declared_key_missing_from_the_config_is_named_with_its_default():
    cfg = compose_with(["optimizer=ssam_f"])
    with open_dict(cfg):
        del cfg.optimizer["num_samples"]
    with pytest.raises(
        ConfigError, match="optimizer.num_samples is missing from the config of optimizer=ssam_f"
    ):
        check_section("optimizer", cfg.optimizer, METHODS["ssam_f"].settings, accepts_more=False)


def test_timm_models_take_keys_beyond_their_declared_ones():
    cfg = compose_with(["model=timm", "+model.drop_path_rate=0.1"])
    check_section("model", cfg.model, MODELS["timm"].settings, accepts_more=MODELS["timm"].accepts_more)


def test_a_declaration_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match="a Sparse SAM method, and only one, declares its mask"):
        MethodSpec("no_mask", "No mask", SPARSE, "a Sparse SAM method without a mask")
    with pytest.raises(ValueError, match="declares rho, which its kind declares"):
        MethodSpec("twice", "Twice", SPARSE, "", own_settings={"rho": Setting(0.1, BOOLEAN, "")}, mask=print)
    with pytest.raises(ValueError, match="defaults must give num_classes"):
        DatasetSpec("shapeless", "", defaults={}, load=print, missing=print)


@pytest.mark.parametrize(
    "arguments, extensions",
    [
        (["optimizer=sam"], []),
        (["extensions=[a.py,pkg.module]", "seed=1"], ["a.py", "pkg.module"]),
        (["extensions=a.py"], ["a.py"]),
        (["+extensions=[a.py]"], ["a.py"]),
    ],
)
def test_the_command_line_s_extensions_are_read_before_hydra_composes(arguments, extensions):
    assert extensions_in(arguments) == extensions


@pytest.mark.parametrize("argument", ["extensions=a.py,b.py", "extensions=null"])
def test_extensions_that_are_no_list_are_refused_with_the_form_to_use(argument):
    with pytest.raises(
        ConfigError, match=r"extensions must be a list of files or modules, e.g. extensions=\[a.py,b.py\]"
    ):
        extensions_in([argument])


def test_a_method_may_build_its_own_optimizer_from_its_own_settings():
    flavour = MethodSpec(
        "scaled_sam",
        "Scaled SAM",
        SHARPNESS_AWARE,
        "SAM with its radius scaled",
        own_settings={"scale": Setting(2.0, above(0), "ρ is multiplied by this")},
        optimizer=lambda params, settings, _: SAM(
            params, torch.optim.SGD, rho=settings["rho"] * settings["scale"], **base_sgd_options(settings)
        ),
    )
    settings = flavour.with_defaults({"lr": 0.1, "weight_decay": 0.0, "rho": 0.05})
    optimizer = flavour.build(list(small_conv_net().parameters()), settings, None)
    assert type(optimizer) is SAM and optimizer.param_groups[0]["rho"] == 0.1


def test_an_analysis_refuses_the_training_images_of_a_dataset_that_always_augments_them():
    cfg = compose_with(["dataset=imagenet"])
    with pytest.raises(ConfigError, match="data.split=train needs the training images without augmentation"):
        analysis_batches(cfg, split="train", batches=1, batch_size=1)
