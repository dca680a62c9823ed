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
from ssam.data import build_datasets
from ssam.data.catalog import DATASETS, DatasetSpec
from ssam.data.tensor_dataset import ImageTensorDataset
from ssam.errors import ConfigError
from ssam.extensions import load_extensions
from ssam.models.catalog import MODELS
from ssam.optim import SAM
from ssam.reference import with_reference
from ssam.settings import ANY, BOOLEAN, POSITIVE_INT, Setting, above, check_section
from ssam.train.kinds import Method, SharpnessAwareMethod, SparseSAMMethod, sam_options, without
from ssam.train.methods import METHODS, build_mask_strategy, build_optimizer, ignored_settings, run_variant
from ssam.train.overrides import extensions_in
from ssam.train.steps import training_step

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
    if issubclass(METHODS[name], SparseSAMMethod):
        fisher = {"num_samples": 4} if "num_samples" in METHODS[name].settings else {}
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
        (
            {"optimizer": "ssam_f", "granularity": "tensor", "norm": "masked", "ascent_fraction": 0.25},
            "tensor, masked norm, ascent_fraction=0.25",
        ),
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


def test_a_declaration_is_checked_when_it_is_registered():
    class NoMask(SparseSAMMethod):
        name, label = "no_mask", "No mask"

    class Seeded(SparseSAMMethod):
        name, label = "seeded", "Seeded"
        settings = {**SparseSAMMethod.settings, "seed": Setting(1, BOOLEAN, "")}

    class Nameless(Method):
        pass

    with pytest.raises(ValueError, match="a Sparse SAM method defines build_mask"):
        NoMask.check_declaration()
    with pytest.raises(
        ValueError, match="declares seed: a name the config and the mask builder take already"
    ):
        Seeded.check_declaration()
    with pytest.raises(ValueError, match="method class Nameless needs a name and a label"):
        Nameless.check_declaration()
    with pytest.raises(ValueError, match="defaults must give num_classes"):
        DatasetSpec("shapeless", "", defaults={}, load=print, missing=print)
    shape = dict(num_classes=2, in_channels=1, image_size=4, mean=[0.5], std=[0.5])
    with pytest.raises(
        ValueError, match="declares hflip, transform: a name every dataset's settings or name"
    ):
        own = {"hflip": Setting(True, BOOLEAN, ""), "transform": Setting(True, BOOLEAN, "")}
        DatasetSpec("twice", "", defaults=shape, load=print, missing=print, own_settings=own)


@pytest.mark.parametrize(
    "arguments, extensions",
    [
        (["optimizer=sam"], []),
        (["extensions=[a.py,pkg.module]", "seed=1"], ["a.py", "pkg.module"]),
        (["+extensions=[a.py]"], ["a.py"]),
    ],
)
def test_the_command_line_s_extensions_are_read_before_hydra_composes(arguments, extensions):
    assert extensions_in(arguments, REPO / "configs") == extensions


def test_without_extensions_on_the_command_line_the_primary_config_s_are_read(tmp_path):
    (tmp_path / "train.yaml").write_text("seed: 0\nextensions: [my_mask.py]\n")
    assert extensions_in(["seed=1"], tmp_path) == ["my_mask.py"]
    assert extensions_in(["extensions=[]"], tmp_path) == []


@pytest.mark.parametrize("argument", ["extensions=a.py", "extensions=a.py,b.py", "extensions=null"])
def test_extensions_that_are_no_list_are_refused_with_the_form_to_use(argument):
    with pytest.raises(
        ConfigError, match=r"extensions must be a list of Python files or modules, e.g. extensions=\["
    ):
        extensions_in([argument], REPO / "configs")


@pytest.mark.parametrize("extensions", ["a.py", [""], [None]])
def test_load_extensions_takes_a_list_of_names(extensions):
    with pytest.raises(ConfigError, match="extensions must be a list of Python files or modules"):
        load_extensions(extensions)


def test_a_method_may_build_its_own_optimizer_from_its_own_settings():
    class ScaledSAM(SharpnessAwareMethod):
        name, label, description = "scaled_sam", "Scaled SAM", "SAM with its radius scaled"
        settings = {
            **SharpnessAwareMethod.settings,
            "scale": Setting(2.0, above(0), "ρ is multiplied by this"),
        }

        @classmethod
        def build_optimizer(cls, params, values, mask=None):
            return SAM(
                params,
                torch.optim.SGD,
                **{**sam_options(values), "rho": values["rho"] * values["scale"]},
            )

    settings = ScaledSAM.with_defaults({"lr": 0.1, "weight_decay": 0.0, "rho": 0.05})
    optimizer = ScaledSAM.build_optimizer(list(small_conv_net().parameters()), settings)
    assert type(optimizer) is SAM and optimizer.param_groups[0]["rho"] == 0.1


def test_an_analysis_refuses_the_training_images_of_a_dataset_that_always_augments_them():
    cfg = compose_with(["dataset=imagenet"])
    with pytest.raises(ConfigError, match="data.split=train needs the training images without augmentation"):
        analysis_batches(cfg, split="train", batches=1, batch_size=1)


def test_a_top_level_setting_that_only_the_trainer_reads_is_never_ignored(monkeypatch):
    class Paced(Method):
        name, label, description = "paced", "Paced", "SGD with a setting read from epochs"
        settings = {**Method.settings, "span": Setting("${epochs}", ANY, "")}

    monkeypatch.setitem(METHODS, "paced", Paced)
    assert ignored_settings("paced") == ignored_settings("sgd") == {"rho", "sparsity"}


def test_a_dataset_s_own_settings_reach_its_loader_with_their_defaults(monkeypatch):
    seen = {}

    def load(root, train, transform, *, copies):
        seen["copies"] = copies
        images = torch.zeros(4 * copies, 1, 4, 4, dtype=torch.uint8)
        return ImageTensorDataset(images, torch.zeros(4 * copies, dtype=torch.long), transform)

    tiny = DatasetSpec(
        "tiny",
        "four blank images, copied",
        defaults=dict(num_classes=2, in_channels=1, image_size=4, mean=[0.5], std=[0.5]),
        load=load,
        missing=lambda root: None,
        own_settings={"copies": Setting(2, POSITIVE_INT, "how many times the four images are repeated")},
    )
    monkeypatch.setitem(DATASETS, "tiny", tiny)
    train, _, _ = build_datasets("tiny", root=None, image_size=4, mean=[0.5], std=[0.5])
    assert (seen["copies"], len(train)) == (2, 8)
    with pytest.raises(TypeError, match="dataset 'tiny' has no setting copy"):
        build_datasets("tiny", root=None, image_size=4, mean=[0.5], std=[0.5], copy=3)


class NormsOnly(SparseSAMMethod):
    """A structural mask (SAM-ON's: the normalisation layers' weights): it ignores sparsity, and
    needs the masked norm, which it makes its default."""

    name, label, description = "norms_only", "Norms only", "perturbs the BatchNorm weights alone"
    settings = {
        **without(SparseSAMMethod.settings, "sparsity"),
        "norm": SparseSAMMethod.settings["norm"].with_default("masked"),
    }

    @classmethod
    def build_mask(cls, context, values):
        return print  # never called here


def test_a_method_sets_its_own_default_for_a_setting_of_the_class_it_extends(monkeypatch):
    monkeypatch.setitem(METHODS, "norms_only", NormsOnly)
    assert NormsOnly.with_defaults({})["norm"] == "masked"
    assert run_variant({"optimizer": "norms_only", "norm": "masked"}) == ""
    assert run_variant({"optimizer": "norms_only", "norm": "full"}) == "full norm"
    with pytest.raises(ConfigError, match="the default 'half' must be one of full, masked"):
        SparseSAMMethod.settings["norm"].with_default("half")


def test_a_method_that_ignores_sparsity_leaves_it_out_of_names_and_records(monkeypatch):
    monkeypatch.setitem(METHODS, "norms_only", NormsOnly)
    assert ignored_settings("norms_only") == {"sparsity"}
    assert "sparsity" not in NormsOnly.recorded_settings(NormsOnly.with_defaults({}))
    from ssam.train.resolvers import run_name

    assert run_name(["optimizer=norms_only", "sparsity=0.9"], "norms_only", "fashion_mnist", "mlp") == (
        "optimizer=norms_only"
    )


def test_train_yaml_gives_each_run_setting_its_declared_default():
    from ssam.train.run_settings import TOP_LEVEL_SETTINGS, TRAINER_SETTINGS

    config = OmegaConf.load(REPO / "configs" / "train.yaml")
    for key, setting in TOP_LEVEL_SETTINGS.items():
        assert config[key] == setting.default, key
    assert list(config.trainer) == list(TRAINER_SETTINGS)
    for key, setting in TRAINER_SETTINGS.items():
        assert config.trainer[key] == setting.default, key


@pytest.mark.parametrize(
    "name, settings, passes",
    [
        ("sgd", {}, 1.0),
        ("sam", {}, 2.0),
        ("sam", {"ascent_fraction": 0.5}, 1.5),
        ("sam", {"m": 4}, 2.0),
        ("sam", {"sam_from": 0.5}, 1.5),
        ("ssam_d", {"sparsity": 0.5, "granularity": "tensor", "norm": "masked"}, 2.0),
    ],
)
def test_a_method_s_passes_per_step_are_the_passes_its_steps_run(name, settings, passes):
    """The examples the model sees in its forward passes over four steps, in whole batches."""
    from ssam.train.kinds import RunContext
    from ssam.train.loop import take_step
    from ssam.train.passes import Passes

    model, seen = small_conv_net(), []
    data = batches(4, size=8)
    values = {"lr": 0.1, "weight_decay": 0.0, "rho": 0.05, "sparsity": 0.5, **settings}
    values = {key: value for key, value in values.items() if key in METHODS[name].settings}
    train_set = torch.utils.data.TensorDataset(*data[0])
    method = METHODS[name](values, RunContext(model, train_set, epochs=1, steps_per_epoch=4, seed=0))
    method.start_epoch(0)
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    for step, (x, y) in enumerate(data):
        take_step(method, Passes(model), x, y, step)
    assert sum(seen) / (8 * len(data)) == method.passes_per_step == passes
