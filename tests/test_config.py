"""Config presets, overrides and validation errors."""

import pytest
from conftest import tiny_config

from configs import resnet, transfer
from imgcls_jax import config as config_lib


@pytest.mark.parametrize(
    "module, preset",
    [(resnet, p) for p in sorted(resnet.PRESETS)]
    + [(transfer, p) for p in sorted(transfer.PRESETS)],
)
def test_every_preset_loads_and_validates(module, preset):
    config = module.get_config(preset)
    config_lib.validate(config)
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
        config_lib.validate(c)


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
    config_lib.validate(tiny_config(**{"dataset.validation_size": 0}))
    with pytest.raises(ValueError, match=message):
        config_lib.validate(tiny_config(**{"dataset.validation_size": 0, **overrides}))
