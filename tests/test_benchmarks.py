"""Benchmark scripts run end to end at a tiny size (their numbers are not checked, only sane);
the PyTorch side of experiments/benchmarks/torch_comparison.py is the same network as ours."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO_ROOT, why_failed

from imgcls_jax.models import build_model

torch = pytest.importorskip("torch")

import torch_resnet  # noqa: E402


def _run(script: str, *flags: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", f"experiments.benchmarks.{script}", *flags], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    return run


@pytest.mark.slow
def test_gpu_benchmark_script_times_both_steps_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    run = _run("gpu", "--model=resnet8", "--image_size=32", "--batch_size=8",
               "--steps=2", "--warmup=1", "--num_classes=10", "--peak_tflops=1", "--notorch_compile",
               f"--out={out}")  # fmt: skip
    result = json.loads(out.read_text())
    for row in result["rows"].values():
        assert row["images_per_sec"] > 0
        expected_mfu = result["train_flops_per_image"] * row["images_per_sec"] / result["devices"]
        assert row["mfu"] == pytest.approx(expected_mfu / 1e12)
    # ResNet-8 (width 64, ImageNet stem) at 32 px: the 7x7 stem conv alone is 16*16 outputs x
    # 64 channels x 7*7*3 multiply-adds = 4.8 MFLOP forward; the whole net is more, < 1 GFLOP.
    assert 3 * 4.8e6 < result["train_flops_per_image"] < 3e9
    assert "ours / PyTorch" in run.stdout


@pytest.mark.slow
def test_input_benchmark_streams_real_jpegs_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    run = _run("input_pipeline", "--images=60", "--image_size=32", "--model=resnet8",
               "--width=4", "--batch_size=8", "--steps=2", "--threads=2", "--worker_batches=2",
               f"--out={out}")  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["decode_img_per_s"]) == {"folder/1", "folder/2", "tfds/1", "tfds/2"}
    assert set(result["grain_workers_img_per_s"]) == {"folder/1", "folder/2", "tfds/1", "tfds/2"}
    rates = [*result["decode_img_per_s"].values(), *result["grain_workers_img_per_s"].values()]
    assert all(rate > 0 for rate in rates) and result["tfds_labels_records_per_s"] > 0
    assert 300 < result["kib_per_image"] * 1024 < 300_000
    fed = {loop["input"]: loop for loop in result["loops"]}
    assert set(fed) == {"one batch on device", "JPEGs streamed from an image folder",
                        "JPEGs streamed from TFDS array_record"}  # fmt: skip
    assert [loop["workers"] for loop in result["loops"]] == [0, 2, 2]
    for loop in fed.values():
        assert 0 <= loop["waited_fraction"] <= 1 and loop["img_per_s"] > 0
    assert "share of step waiting" in run.stdout


@pytest.mark.slow
def test_step_profile_attributes_the_step_to_its_operations(tmp_path):
    out = tmp_path / "profile.json"
    run = _run("profile_step", "--config=configs/resnet.py:tiny", "--config.input.batch_size=16",
               "--image_size=16", "--steps=2", f"--out={out}")  # fmt: skip
    result = json.loads(out.read_text())
    shares = result["ms_per_step"]
    assert result["busy_ms_per_step"] == pytest.approx(sum(shares.values()), rel=0.01)
    assert 0 < result["busy_ms_per_step"]
    convolutions = [name for name in shares if "conv" in name]  # oneDNN's or XLA's.
    assert convolutions and sum(shares[name] for name in convolutions) > 0
    assert {row["operation"] for row in result["largest"]} <= set(shares)
    assert "ms per step" in run.stdout


@pytest.mark.slow
def test_cpu_options_benchmark_times_a_preset_and_both_paths_compute_one_loss(tmp_path):
    out = tmp_path / "options.json"
    variants = "our oneDNN kernels (f32; the default),baseline f32"
    run = _run("cpu_options", "--preset=tiny", "--rounds=1", "--steps=1",
               f"--variants={variants}", f"--out={out}")  # fmt: skip
    result = json.loads(out.read_text())
    assert (result["preset"], result["model"], result["batch_size"]) == ("tiny", "resnet8", 64)
    onednn, xla = (result["results"][name] for name in variants.split(","))
    assert onednn["img_per_s"] > 0 and xla["img_per_s"] > 0
    assert onednn["first_loss"] == pytest.approx(xla["first_loss"], rel=1e-4)
    assert "vs our oneDNN kernels" in run.stdout
    typo = subprocess.run([sys.executable, "-m", "experiments.benchmarks.cpu_options",
                           "--variants=baseline f23"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert typo.returncode != 0 and "Did you mean 'baseline f32'" in typo.stderr


@pytest.mark.slow
def test_compile_benchmark_reports_the_presets_step(tmp_path):
    from conftest import tiny_config

    from imgcls_jax.data.synthetic import random_dataset
    from imgcls_jax.training.builder import Trainer

    out = tmp_path / "compile.json"
    run = _run("compile_time", "--cases=resnet:tiny@28x1", "--batch_size=8", f"--out={out}")
    (row,) = json.loads(out.read_text())["rows"]
    trainer = Trainer(tiny_config(**{"input.batch_size": 8}), random_dataset(8, 28, 1, 10, 8))
    expected_arrays = len(jax.tree.leaves(trainer.create_state()))
    assert (row["model"], row["batch_size"], row["image"]) == ("resnet8", 8, "28x28x1")
    assert row["state_arrays"] == expected_arrays and row["hlo_lines"] > expected_arrays
    assert row["compile_s"] > 0 and "| resnet:tiny |" in run.stdout
    assert row["init_compile_s"] >= 0 and row["checksums_compile_s"] >= 0
    typo = subprocess.run([sys.executable, "-m", "experiments.benchmarks.compile_time", "--cases=resnet:tiny"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert typo.returncode != 0 and "is not CONFIG:PRESET@SIZExCHANNELS" in typo.stderr


def test_conv_algorithm_benchmark_times_both_paths_and_reports_the_rules_choice(tmp_path):
    """Both paths are checked against XLA inside the script; the rule takes Winograd for the
    7x7 64-channel layer and not for the 32-channel one."""
    from imgcls_jax.kernels import onednn

    if not (onednn.available() and onednn.avx512()):
        pytest.skip("oneDNN's Winograd convolutions need its kernels and AVX-512")
    out = tmp_path / "conv.json"
    _run("conv_algorithm", "--layers=ResNet-20 stage 2,ResNet-20 stage 3",
         "--rounds=1", "--calls=1", f"--out={out}")  # fmt: skip
    rows = {row["layer"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ResNet-20 stage 2", "ResNet-20 stage 3"}
    for row in rows.values():
        assert all(ms > 0 for path in row["ms"].values() for ms in path.values())
    assert rows["ResNet-20 stage 2"]["rule"] == "other"
    assert rows["ResNet-20 stage 3"]["rule"] == "winograd"


def test_torch_twin_of_the_airbench_net_computes_our_function():
    """torch_comparison.py's PyTorch airbench net, given our weights, gives our logits (evaluation
    mode), so the benchmark compares the same network."""
    config = ml_collections.ConfigDict(dict(name="airbench", width=4, stem="small",
                                            dtype="float32", bn_momentum=0.9, kernels="xla"))  # fmt: skip
    ours = build_model(config, 5)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 28, 28, 1), np.float32)
    variables = jax.jit(lambda key: ours.init(key, images))(jax.random.key(0, impl="rbg"))
    variables = jax.tree.map(lambda v: v + 0.3 * np.abs(rng.standard_normal(v.shape, np.float32)),
                             variables)  # fmt: skip
    twin = torch_resnet.build("airbench", 5, width=4, stem="small", channels=1).eval()
    params, stats = variables["params"], variables["batch_stats"]
    with torch.no_grad():
        for i in range(3):
            group, layers = f"ConvGroup_{i}", twin.features[7 * i : 7 * i + 7]
            for conv, norm, j in ((layers[0], layers[2], 0), (layers[4], layers[5], 1)):
                kernel = np.asarray(params[group][f"Conv_{j}"]["kernel"])
                conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
                bn, bn_stats = params[group][f"NormAct_{j}"], stats[group][f"NormAct_{j}"]
                for tensor, value in ((norm.weight, bn["scale"]), (norm.bias, bn["bias"]),
                                      (norm.running_mean, bn_stats["mean"]),
                                      (norm.running_var, bn_stats["var"])):  # fmt: skip
                    tensor.copy_(torch.from_numpy(np.array(value)))
        twin.head.weight.copy_(torch.from_numpy(np.asarray(params["head"]["kernel"]).T.copy()))
        twin.head.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))
        expected = twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    logits = ours.apply(variables, images, train=False)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_export_benchmark_times_the_commands_at_tiny_size(tmp_path):
    out = tmp_path / "export.json"
    # The preset's evaluation batch (500) does not divide among the tests' 8 fake devices.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, "-m", "experiments.benchmarks.export", f"--out={out}",
               f"--workdir={tmp_path / 'run'}", "--train_steps=2", "--images=4", "--rounds=1",
               "--noresnet50"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, why_failed(run)
    result = json.loads(out.read_text())
    assert [r["format"] for r in result["exports"]] == ["stablehlo"]
    size = result["resnet20_size"]
    assert size["weight_bytes"] < size["artifact_bytes"] < 2 * size["weight_bytes"]
    assert set(result["predict_seconds"]) == {"workdir", "stablehlo"} and result["images"] == 4
    assert result["provenance"]["command"].startswith("python -m experiments.benchmarks.export")


def test_corruption_and_few_shot_benchmarks_run_at_tiny_size(tmp_path):
    out = tmp_path / "corruptions.json"
    _run("corruptions", "--num_images=40", "--batch_size=20", "--rounds=1", "--width=4",
         "--corruptions=contrast,shot_noise", f"--out={out}")  # fmt: skip
    rows = {row["corruption"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"clean", "contrast", "shot_noise"}
    assert all(row["eval_s"] > 0 for row in rows.values())
    out = tmp_path / "few_shot.json"
    _run("few_shot", "--train_examples=300", "--test_examples=100", "--batch_size=40",
         f"--out={out}")  # fmt: skip
    result = json.loads(out.read_text())
    assert result["total_s"] >= result["features_s"] > 0
    assert set(result["results"]) >= {"few_shot/1shot_accuracy", "few_shot/25shot_accuracy"}


@pytest.mark.slow
def test_optimizer_step_benchmark_times_every_optimizer_of_the_ablation(tmp_path):
    out = tmp_path / "optimizer_step.json"
    _run("optimizer_step", "--steps=1", "--rounds=1", "--batch_size=16", f"--out={out}")
    rows = json.loads(out.read_text())["rows"]
    assert [r["optimizer"] for r in rows] == ["SGD", "AdamW", "Muon", "SAM", "schedule-free AdamW"]
    assert all(r["ms_per_step"] > 0 for r in rows) and rows[0]["vs_sgd"] == 1.0
