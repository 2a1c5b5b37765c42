"""PyTorch -> Flax conversion: the converted model computes the same function; errors list
every missing, unused and misshapen tensor."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_resnet  # noqa: E402

from imgcls_jax import convert  # noqa: E402
from imgcls_jax.models import RESNET_ARCHS, build_model  # noqa: E402
from imgcls_jax.models.resnet import BottleneckBlock  # noqa: E402


def _torch_resnet(arch, num_classes, width, stem, channels=3):
    spec = RESNET_ARCHS[arch]
    block = (
        torch_resnet.Bottleneck if spec["block_cls"] is BottleneckBlock else torch_resnet.BasicBlock
    )
    model = torch_resnet.ResNet(block, spec["stage_sizes"], num_classes, width, stem, channels)
    return torch_resnet.randomize(model)


def _state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _flax_logits(arch, variables, num_classes, width, stem, images_nchw):
    import ml_collections

    config = ml_collections.ConfigDict({"name": arch, "width": width, "stem": stem,
                                        "dtype": "float32", "bn_momentum": 0.9})  # fmt: skip
    model = build_model(config, num_classes)
    return np.asarray(model.apply(variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1))))


@pytest.mark.parametrize(
    "arch, width, stem, size",
    [
        ("resnet18", 16, "imagenet", 64),
        ("resnet50", 8, "imagenet", 64),
        ("resnet20", 8, "small", 28),
    ],
)
def test_converted_resnet_matches_pytorch(arch, width, stem, size):
    reference = _torch_resnet(arch, 7, width, stem)
    variables, classes = convert.convert_model(arch, _state_dict(reference), width, stem, size)
    assert classes == 7
    images = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()
    got = _flax_logits(arch, variables, 7, width, stem, images)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-4
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_mismatched_weights_list_every_problem():
    tensors = _state_dict(_torch_resnet("resnet18", 5, 8, "imagenet"))
    tensors["extra.weight"] = np.zeros(3, np.float32)
    del tensors["layer3.1.bn2.running_var"]
    tensors["layer1.0.conv1.weight"] = np.zeros((8, 8, 5, 5), np.float32)
    with pytest.raises(convert.ConversionError) as error:
        convert.convert_model("resnet18", tensors, 8, "imagenet", 64)
    message = str(error.value)
    assert "1 missing" in message and "layer3.1.bn2.running_var" in message
    assert "1 unused" in message and "extra.weight" in message
    assert "1 with the wrong shape" in message and "layer1.0.conv1.weight: (8, 8, 5, 5)" in message
    with pytest.raises(convert.ConversionError, match="missing"):  # Wrong architecture.
        convert.convert_model("resnet34", _state_dict(_torch_resnet("resnet18", 5, 8, "imagenet")),
                              8, "imagenet", 64)  # fmt: skip
