"""timm ViT/DeiT weights -> our ViT: every variant computes the function of timm's layout
(random weights), with its patch size read off the weights, and fine-tunes under a new head.
The reference is tests/torch_vit.py, checked here against `timm` (PyPI) itself, with
timm's position-embedding resize."""

import importlib.util
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_vit  # noqa: E402
from conftest import REPO_ROOT, synthetic_dataset, tiny_config, why_failed  # noqa: E402

from imgcls_jax import convert, registry  # noqa: E402

TIMM_NAMES = {"vit_ti": "vit_tiny_patch16_224", "vit_s": "vit_small_patch16_224",
              "vit_b": "vit_base_patch16_224", "vit_l": "vit_large_patch16_224"}  # fmt: skip


def _state_dict(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _ours(arch, variables, num_classes, images_nchw, patch_size=16):
    model = registry.build("model", arch, num_classes=num_classes, patch_size=patch_size)
    return np.asarray(model.apply(variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1))))


def _theirs(model, images_nchw):
    with torch.no_grad():
        return model(torch.from_numpy(images_nchw)).numpy()


def _relative_error(got, expected):
    return np.linalg.norm(got - expected) / np.linalg.norm(expected)


def _images(seed, size, count=3):
    return np.random.default_rng(seed).normal(size=(count, 3, size, size)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TIMM_NAMES))
def test_every_converted_vit_matches_the_timm_layout(arch):
    """At 32 px (a 2x2 patch grid) to stay fast: every tensor is still converted and used."""
    reference = torch_vit.randomize(torch_vit.VisionTransformer(arch, 32, 16, 10))
    variables, classes = convert.convert_model(arch, _state_dict(reference), 0, "", 32)
    assert classes == 10
    images = _images(0, 32)
    assert _relative_error(_ours(arch, variables, 10, images), _theirs(reference, images)) <= 1e-4


def test_the_patch_size_is_read_off_the_weights():
    """A DeiT-Ti-like model with patch 8 at 32 px (4x4 patches)."""
    reference = torch_vit.randomize(torch_vit.VisionTransformer("vit_ti", 32, 8, 5))
    variables, _ = convert.convert_model("vit_ti", _state_dict(reference), 0, "", 32)
    assert variables["params"]["stem_conv"]["kernel"].shape == (8, 8, 3, 192)
    images = _images(1, 32)
    got = _ours("vit_ti", variables, 5, images, patch_size=8)
    assert _relative_error(got, _theirs(reference, images)) <= 1e-4


@pytest.mark.slow
def test_fine_tuning_takes_every_tensor_but_the_head(tmp_path):
    """A converted ViT under a new 4-class head, on 1-channel 32 px images: the encoder's
    variables are the checkpoint's (the stem summed over its input channels), the head is
    new."""
    from imgcls_jax.training.builder import Trainer

    reference = torch_vit.randomize(torch_vit.VisionTransformer("vit_ti", 32, 16, 10))
    variables, _ = convert.convert_model("vit_ti", _state_dict(reference), 0, "", 32)
    metadata = {"architecture": "vit_ti", "width": 0, "stem": "", "num_classes": 10,
                "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "class_names": [],
                "patch_size": 16, "pool": "cls", "posemb": "learn"}  # fmt: skip
    convert.save_pretrained(str(tmp_path / "vit"), variables, metadata)
    config = tiny_config(**{"model.name": "vit_ti", "model.patch_size": 16,
                            "transfer.checkpoint": str(tmp_path / "vit"),
                            "training.num_train_steps": 1})  # fmt: skip
    trainer = Trainer(config, synthetic_dataset(size=32))
    params = jax.tree.map(np.asarray, trainer.create_state().params)
    assert params["head"]["kernel"].shape == (192, 4)
    converted = variables["params"]
    np.testing.assert_array_equal(params["block_5"]["attention"]["query"]["kernel"],
                                  converted["block_5"]["attention"]["query"]["kernel"])  # fmt: skip
    np.testing.assert_allclose(params["stem_conv"]["kernel"][:, :, 0],
                               converted["stem_conv"]["kernel"].sum(axis=2), rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="patch_size: 8"):
        Trainer(tiny_config(**{"model.name": "vit_ti", "model.patch_size": 8,
                               "transfer.checkpoint": str(tmp_path / "vit")}),
                synthetic_dataset(size=32))  # fmt: skip


# Runs in a fresh process: timm's own VisionTransformer against the twin for every variant,
# and timm's position-embedding resize against our converter's. timm imports torchvision at
# the top of modules the ViT does not use; where the installed torchvision cannot load (a
# CUDA build beside a CPU torch), those imports get empty stand-ins, so the code compared is
# still timm's.
TIMM_CHECK = """
import json, sys, types
import numpy as np
try:
    import timm
    shim = False
except (ImportError, RuntimeError):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    class _Anything(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything(name, (), {})

    class _StandIn(types.ModuleType):
        __path__ = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything(name, (), {})

    for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.utils",
                 "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.datasets", "torchvision.models",
                 "torchvision.models.feature_extraction"):
        sys.modules[name] = _StandIn(name)
    import timm
    shim = True
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
sys.path.insert(0, "tests")
import torch_vit
from test_convert_vit import TIMM_NAMES, _images, _ours, _relative_error, _state_dict, _theirs
from imgcls_jax import convert

errors = {}
for arch, name in TIMM_NAMES.items():
    theirs = timm.create_model(name, pretrained=False, img_size=32, num_classes=10).eval()
    twin = torch_vit.randomize(torch_vit.VisionTransformer(arch, 32, 16, 10))
    theirs.load_state_dict(twin.state_dict())  # Same keys and shapes, or this raises.
    images = _images(2, 32)
    errors[arch] = float(_relative_error(_theirs(twin, images), _theirs(theirs, images)))
small = torch_vit.randomize(torch_vit.VisionTransformer("vit_ti", 48, 16, 10))
large = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=80,
                          num_classes=10).eval()
large.load_state_dict(checkpoint_filter_fn(small.state_dict(), large))
variables, _ = convert.convert_model("vit_ti", _state_dict(small), 0, "", 80)
images = _images(3, 80, count=2)
errors["resized"] = float(_relative_error(_ours("vit_ti", variables, 10, images),
                                          _theirs(large, images)))
print(json.dumps({"timm": timm.__version__, "shim": shim, "errors": errors}))
"""


@pytest.mark.slow
def test_the_reference_is_timms_vision_transformer_and_resize():
    """timm's models, loaded with the twin's state dict, compute its function (1e-5); weights
    for a 3x3 grid (48 px) run at 80 px (5x5) as timm's checkpoint filter resizes them
    (bicubic, antialiased) and as our converter does (1e-4)."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (the test extra installs it)")
    run = subprocess.run([sys.executable, "-c", TIMM_CHECK], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    errors = result["errors"]
    assert set(errors) == {*TIMM_NAMES, "resized"}
    assert all(errors[arch] <= 1e-5 for arch in TIMM_NAMES), errors
    assert errors["resized"] <= 1e-4, errors
