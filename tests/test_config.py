"""Config presets, overrides and validation errors."""

import pytest
from conftest import tiny_config

from configs import resnet, transfer, vit
from imgcls_jax.config import apply_overrides, overrides_between
from imgcls_jax.training import config_check


@pytest.mark.parametrize(
    "module, preset",
    [(resnet, p) for p in sorted(resnet.PRESETS)]
    + [(transfer, p) for p in sorted(transfer.PRESETS)]
    + [(vit, p) for p in sorted(vit.PRESETS)],
)
def test_every_preset_loads_and_validates(module, preset):
    config = module.get_config(preset)
    config_check.validate(config)
    assert config.is_locked


def test_transfer_presets_differ_only_in_what_they_fine_tune():
    full, probe = transfer.get_config("full"), transfer.get_config("linear_probe")
    assert full.transfer.checkpoint == probe.transfer.checkpoint == transfer.PRETRAINED
    assert probe.transfer.linear_probe and not full.transfer.linear_probe
    assert transfer.get_config("scratch").transfer.checkpoint == ""
    assert transfer.get_config("partial").transfer.freeze


def test_default_preset_is_fashion_mnist():
    assert resnet.get_config(None).dataset.name == "fashion_mnist"


def test_imagenet_preset_is_the_standard_recipe():
    c = resnet.get_config("imagenet")
    assert (c.model.name, c.model.dtype, c.model.stem) == ("resnet50", "bfloat16", "imagenet")
    assert c.optimizer.name == "sgd" and c.optimizer.nesterov
    assert c.optimizer.lr_base_batch_size == 256 and c.training.num_epochs == 90
    assert c.schedule.name == "cosine" and c.schedule.warmup_epochs > 0
    assert c.loss.label_smoothing == 0.1 and c.optimizer.weight_decay == 1e-4


def test_override_reaches_config():
    c = tiny_config(**{"optimizer.learning_rate": 0.05})
    assert c.optimizer.learning_rate == 0.05


def test_misspelled_override_names_closest_key():
    with pytest.raises(KeyError, match="Did you mean 'optimizer.learning_rate'"):
        tiny_config(**{"optimizer.learnin_rate": 0.05})


def test_locked_config_rejects_new_attribute():
    c = resnet.get_config("tiny")
    with pytest.raises(AttributeError):
        c.optimizer.learnin_rate = 0.1


@pytest.mark.parametrize(
    "key, value, hint",
    [
        ("model.name", "resnt50", "resnet50"),
        ("dataset.name", "fashion_mnst", "fashion_mnist"),
        ("optimizer.name", "adamx", "adamw"),
        ("schedule.name", "cosin", "cosine"),
        ("augment.train", "flip_lrr", "flip_lr"),
    ],
)
def test_unknown_name_names_closest_choice(key, value, hint):
    c = tiny_config(**{key: value, "dataset.source": "auto"})
    with pytest.raises(ValueError, match=f"Did you mean '{hint}'"):
        config_check.validate(c)


def test_unknown_preset_names_closest():
    with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
        resnet.get_config("cifar")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"training.early_stopping_patience": 2}, "early_stopping_patience needs a validation"),
        ({"dataset.test_split": ""}, "leaves nothing to evaluate"),
    ],
)
def test_no_validation_split_refuses_what_needs_one(overrides, message):
    config_check.validate(tiny_config(**{"dataset.validation_size": 0}))
    with pytest.raises(ValueError, match=message):
        config_check.validate(tiny_config(**{"dataset.validation_size": 0, **overrides}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.learning_rate": -0.1}, r"optimizer.learning_rate=-0.1 is out of range"),
        ({"training.keep_checkpoints": 0}, r"keep_checkpoints=0 is out of range: it must lie in \[1"),
        ({"optimizer.momentum": 1.5}, r"optimizer.momentum=1.5 is out of range"),
        ({"augment.mix_prob": 2.0}, r"augment.mix_prob=2.0"),
        ({"dataset.std": (0.0,)}, r"dataset.std=\(0.0,\) must be positive"),
        ({"dataset.class_fractions": (0.5, 0.0)}, r"class_fractions holds 0.0"),
        ({"augment.train": "flip_lr(2.5)"}, r"'flip_lr\(2.5\)': probability=2.5 must be a number in \[0, 1\]"),
        ({"augment.train": "random_erasing(1.5)"}, r"probability=1.5 must be a number"),
        ({"augment.train": "randaugment(2, 40)"}, r"magnitude=40 must be a number in \[0, 10\]"),
        ({"augment.train": "random_crop(-3)"}, r"padding=-3 must be an integer in \[0, inf\]"),
        ({"augment.train": "random_crop(2, 'refelct')"}, r"mode='refelct' is not known. Did you mean 'reflect'"),
        ({"augment.eval": "center_crop(2.5)"}, r"size=2.5 must be an integer"),
        ({"dataset.streaming": True, "input.device_resident": "on"}, r"device_resident='on' loads the whole train split"),
        ({"input.workers": -2}, r"input.workers=-2 is out of range"),
    ],
)  # fmt: skip
def test_values_out_of_range_fail_validation_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_check.validate(tiny_config(**overrides))


def test_crops_larger_than_the_images_fail_before_training(dataset):
    from imgcls_jax.training.builder import Trainer

    for key, spec in (("augment.eval", "center_crop(64)"), ("augment.train", "resize(4)|random_crop(1)|center_crop(9)")):  # fmt: skip
        with pytest.raises(
            ValueError, match=f"config.{key}=.* does not fit the dataset's 8x8x1 images"
        ):
            Trainer(tiny_config(**{key: spec}), dataset)


def test_overrides_between_presets_turn_one_into_the_other():
    base, target = resnet.get_config(), vit.get_config("fashion_mnist")
    overrides = overrides_between(base, target)
    assert overrides["model.name"] == "vit_ti" and overrides["optimizer.name"] == "adamw"
    assert "dataset.name" not in overrides  # Both presets train on Fashion-MNIST.
    assert apply_overrides(base, overrides).to_dict() == target.to_dict()
    assert overrides_between(target, target) == {}
