"""The TPU fit check, compiled for a small topology on this CPU (libtpu, no TPU)."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, tiny_config

from imgcls_jax.runtime.aot import chips, collectives

pytest.importorskip("libtpu", reason="the fit check compiles with libtpu (pip install '.[tpu]')")

from imgcls_jax.runtime.aot import programs  # noqa: E402
from imgcls_jax.training import fit_check  # noqa: E402


def _small_config(**overrides):
    return tiny_config(**{"model.dtype": "bfloat16", "input.batch_size": 32,
                          "input.eval_batch_size": 32, **overrides})  # fmt: skip


@pytest.fixture(scope="module")
def v5e_report():
    return fit_check.check(_small_config(), "v5e:2x2")


@pytest.mark.slow
def test_reports_the_topology_the_state_and_the_flops(v5e_report):
    report = v5e_report
    assert (report["devices"], report["chip"]["name"], report["per_device_batch"]) == (4, "v5e", 8)
    init, train, evaluate = report["programs"]
    # The state is replicated: the initialisation's outputs and the train step's donated
    # arguments are the whole state, byte for byte.
    config = _small_config()
    trainer = fit_check.build_trainer(config, fit_check.dataset_shape(config.dataset, 0, 0),
                                  programs.topology_devices("v5e:2x2"))  # fmt: skip
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state()))
    assert init["output_bytes"] >= state_bytes
    assert train["alias_bytes"] >= state_bytes * 0.99
    assert train["peak_bytes"] == (train["argument_bytes"] + train["output_bytes"]
                                   - train["alias_bytes"] + train["temp_bytes"]
                                   + train["code_bytes"])  # fmt: skip
    # XLA's count of the train step agrees with ours from the jaxpr (convolutions and matrix
    # products, forward and backward) within what elementwise work adds.
    from imgcls_jax.reporting import flops

    state = trainer.abstract_state()
    batch = {"image": jax.ShapeDtypeStruct((32, 28, 28, 1), np.uint8),
             "label": jax.ShapeDtypeStruct((32,), np.int32)}  # fmt: skip
    ours = flops.flops(trainer.train_step, state, batch, trainer.train_key) / 32
    assert ours <= report["train_flops_per_image"] <= 1.5 * ours
    # Gradients are summed across the data axis: every gradient is all-reduced, at least in
    # bfloat16 (the model computes in bfloat16; the cast to float32 comes after the sum).
    reduced = train["collectives"]["all-reduce"]["result_bytes"]
    assert reduced >= sum(x.size * 2 for x in jax.tree.leaves(state.params))
    estimate = report["estimate"]
    assert estimate["step_s"] == max(estimate["compute_s"], estimate["hbm_s"],
                                     estimate["collectives_s"])  # fmt: skip
    assert math.isclose(estimate["images_per_s"], 32 / estimate["step_s"])


def test_a_program_larger_than_a_chip_is_refused_with_what_would_fit():
    # 8,192 images of 224 px per chip: ResNet-8's first activations alone exceed 16 GiB.
    config = _small_config(**{"input.batch_size": 32768, "dataset.train_size": 0,
                              "dataset.image_size": 224})  # fmt: skip
    with pytest.raises(programs.DoesNotFit) as refused:
        fit_check.check(config, "v5e:2x2")
    line = str(refused.value)
    assert "\n" not in line and line.startswith("train_step does not fit: ")
    assert "exceeds available HBM" in line and "per-chip batch (8192;" in line
    assert "config.training.grad_accum_steps" in line


@pytest.mark.slow
def test_command_writes_the_report_and_a_bad_topology_is_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "imgcls_jax.training.fit_check", "--config=configs/resnet.py:tiny",
               "--topology=v5e:2x2", f"--out={tmp_path}"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["topology"] == "v5e:2x2" and report["devices"] == 4
    assert "Estimate, not a measurement" in (tmp_path / "report.md").read_text()
    command[4] = "--topology=v5e:3x7"
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith("imgcls_jax.training.fit_check: --topology='v5e:3x7'")
    )
    command[4] = "--config.mesh.fsdb=2"  # A misspelt override: one line naming the key.
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
    assert run.stderr.startswith(
        "imgcls_jax.training.fit_check: bad config override: 'fsdb' Did you mean \"fsdp\""
    )


HLO = """
  %all-reduce = f32[512,512]{1,0:T(8,128)} all-reduce(%fusion), channel_id=1, replica_groups=mesh['axis_0'=4] {'axis_0'}, to_apply=%add
  %ar2 = (bf16[64]{0}, f32[10]{0}) all-reduce(%a, %b), replica_groups={{0,1},{2,3}}, to_apply=%add
  %ags = (f32[8]{0}, f32[64]{0}) all-gather-start(%p), replica_groups=[1,8]<=[8], dimensions={0}
  %agd = f32[64]{0} all-gather-done(%ags)
  %rs = f32[16]{0} reduce-scatter(%q), replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
"""


def test_collectives_are_read_with_their_sizes_and_groups():
    found = collectives.collectives(HLO, devices=8)
    assert [(c.kind, c.result_bytes, c.group_size) for c in found] == [
        ("all-reduce", 512 * 512 * 4, 4),
        ("all-reduce", 64 * 2 + 10 * 4, 2),
        ("all-gather", 64 * 4, 8),
        ("reduce-scatter", 16 * 4, 4),
    ]
    table = collectives.summary(found)
    assert table["all-reduce"]["count"] == 2
    assert math.isclose(table["all-reduce"]["sent_bytes"], 2 * 3 / 4 * 512 * 512 * 4 + 168)
    assert math.isclose(table["reduce-scatter"]["sent_bytes"], 3 * 64)


def test_every_topology_generation_has_its_chip():
    for kind in chips.CHIPS:
        assert chips.chip_for(kind).hbm_bytes >= 16 * chips.GIB
    with pytest.raises(ValueError, match="known: TPU v4"):
        chips.chip_for("TPU v9")


@pytest.mark.slow
def test_two_slices_and_a_sharded_state_hold_less_per_chip(v5e_report):
    """Two slices of v5e:2x2 are 8 devices on 2 hosts; splitting the state over groups of 4
    leaves each chip about a quarter of the replicated state's arguments."""
    config = _small_config(**{"mesh.fsdp": 4, "mesh.fsdp_min_bytes": 0, "model.width": 8})
    sharded = fit_check.check(config, "v5e:2x2", num_slices=2)
    replicated = fit_check.check(_small_config(**{"model.width": 8}), "v5e:2x2", num_slices=2)
    assert (sharded["devices"], sharded["hosts"], sharded["num_slices"]) == (8, 2, 2)
    # One mesh row per slice; the state is split within a slice, never across the slower
    # network between slices.
    assert sharded["mesh"] == {"slice": 2, "data": 1, "fsdp": 4}
    assert replicated["mesh"] == {"slice": 2, "data": 4, "fsdp": 1}
    args = {r["name"]: r["argument_bytes"] for r in replicated["programs"]}
    args_sharded = {r["name"]: r["argument_bytes"] for r in sharded["programs"]}
    assert args_sharded["train_step"] < 0.5 * args["train_step"]
    # Sharded parameters are gathered where they are used: all-gathers appear.
    assert "all-gather" in sharded["programs"][1]["collectives"]


@pytest.mark.slow
def test_a_distilled_config_is_checked_without_its_teacher_and_says_so(v5e_report, tmp_path):
    distilled = fit_check.check(_small_config(**{"distill.teacher": str(tmp_path)}), "v5e:2x2")
    assert distilled["left_out"].startswith(f"the distillation teacher {tmp_path}")
    assert [p["peak_bytes"] for p in distilled["programs"]] == [
        p["peak_bytes"] for p in v5e_report["programs"]
    ]
