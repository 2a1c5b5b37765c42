"""Checkpoints: restore across device counts, content checksums, fallback from damaged steps."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_config

from imgcls_jax import checkpoint, convert
from imgcls_jax.checkpoint import Checkpointer, CheckpointRestoreError, integrity, old_names
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.loop import train_and_evaluate

CONFIG = {"training.num_train_steps": 4, "input.batch_size": 32,
          "training.checkpoint_every_steps": 2, "training.eval_every_epochs": 10.0}  # fmt: skip


def _restore(workdir, config, dataset, devices=None):
    trainer = Trainer(config, dataset, devices)
    checkpointer = Checkpointer(str(workdir), 10)
    try:
        return checkpointer.restore(trainer.abstract_state())
    finally:
        checkpointer.close()


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _flip_byte_in_state(step_dir):
    """XORs the middle byte of every array data file of a saved step (bit rot)."""
    for root, _, names in os.walk(step_dir / "state"):
        if os.path.basename(root) != "d":
            continue
        for name in names:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                data = bytearray(f.read())
                data[len(data) // 2] ^= 0xFF
                f.seek(0)
                f.write(bytes(data))


def test_checksum_changes_with_any_single_byte():
    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(7, 5)).astype(np.float32), "s": jnp.int32(3),
            "h": rng.normal(size=11).astype(jnp.bfloat16)}  # fmt: skip
    reference = integrity.state_checksums(tree)
    assert reference == integrity.state_checksums(jax.tree.map(jnp.asarray, tree))
    raw = tree["w"].view(np.uint8).reshape(-1)
    for position in rng.choice(raw.size, 20, replace=False):
        damaged = raw.copy()
        damaged[position] ^= rng.integers(1, 256, dtype=np.uint8)
        changed = integrity.state_checksums({**tree, "w": damaged.view(np.float32).reshape(7, 5)})
        assert changed["['w']"] != reference["['w']"]
        assert changed["['h']"] == reference["['h']"]


def _numpy_checksum(x: np.ndarray) -> str:
    """The checksum as stored in every checkpoint's integrity file, computed in NumPy: the
    array's bits as 32-bit words w_i (narrower values widened), sums of w_i (2i+1) and
    w_i (2i+1)^2 modulo 2^32."""
    words = x.astype(np.uint32) if x.dtype == np.bool_ else x.view(f"u{x.dtype.itemsize}")
    words = words.reshape(-1).astype(np.uint64)
    weight = np.arange(words.size, dtype=np.uint64) * 2 + 1
    first = int(np.sum((words * weight) % 2**32) % 2**32)
    second = int(np.sum((words * (weight * weight % 2**32)) % 2**32) % 2**32)
    return f"{first:08x}{second:08x}"


def test_checksums_and_finiteness_match_their_definition():
    rng = np.random.default_rng(1)
    tree = {
        "f32": rng.normal(size=(33, 17)).astype(np.float32),
        "bf16": rng.normal(size=(5, 3, 4)).astype(jnp.bfloat16),
        "i32": rng.integers(-(2**31), 2**31 - 1, size=(40,), dtype=np.int32),
        "u8": rng.integers(0, 256, size=(9, 7), dtype=np.uint8),
        "flags": rng.random(13) > 0.5,
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 4), np.float32),
        "nan": np.array([1.0, np.nan, 2.0], np.float32),
        "inf": np.array([[-np.inf]], jnp.bfloat16),
    }
    checksums, nonfinite = integrity.checksums_and_nonfinite(jax.tree.map(jnp.asarray, tree))
    assert checksums == {f"['{name}']": _numpy_checksum(np.asarray(x)) for name, x in tree.items()}
    assert sorted(nonfinite) == ["['inf']", "['nan']"]


@pytest.mark.slow
def test_restore_on_another_device_count_is_identical(tmp_path, dataset):
    config = tiny_config(**CONFIG)
    devices = jax.devices()
    for save_on, restore_on in ((8, (2, 1)), (1, (8,))):
        workdir = tmp_path / str(save_on)
        train_and_evaluate(config, str(workdir), dataset, devices=devices[:save_on])
        saved, _ = _restore(workdir, config, dataset, devices[:save_on])
        for count in restore_on:
            restored, _ = _restore(workdir, config, dataset, devices[:count])
            assert len(jax.tree.leaves(restored.params)[0].sharding.device_set) == count
            assert int(restored.step) == 4
            _assert_trees_equal(saved, restored)


def test_damaged_step_falls_back_and_the_run_ends_as_if_undamaged(tmp_path, dataset):
    config = tiny_config(**{**CONFIG, "training.checkpoint_every_steps": 1})
    reference = train_and_evaluate(config, str(tmp_path / "reference"), dataset)
    # A run killed after its step-3 save, whose step 3 then got damaged on disk.
    workdir = tmp_path / "damaged"
    shutil.copytree(tmp_path / "reference", workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    _flip_byte_in_state(workdir / "checkpoints" / "3")

    results = train_and_evaluate(config, str(workdir), dataset)  # Falls back to step 2.
    assert os.listdir(workdir / checkpoint.QUARANTINE_DIR)[0].startswith("checkpoints_3_")
    assert results["step"] == 4
    for key in ("test/accuracy", "test/loss", "val/loss"):
        assert results[key] == reference[key]
    final, _ = _restore(workdir, config, dataset)
    expected, _ = _restore(tmp_path / "reference", config, dataset)
    _assert_trees_equal(final, expected)


def test_no_restorable_step_is_an_error_that_moves_nothing(tmp_path, dataset):
    config = tiny_config(**{**CONFIG, "training.num_train_steps": 2})
    train_and_evaluate(config, str(tmp_path), dataset)
    _flip_byte_in_state(tmp_path / "checkpoints" / "2")
    with pytest.raises(CheckpointRestoreError, match="step 2: "):
        _restore(tmp_path, config, dataset)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    assert not os.path.exists(tmp_path / checkpoint.QUARANTINE_DIR)


def test_damaged_metadata_falls_back_to_the_older_step(tmp_path, dataset):
    config = tiny_config(**{**CONFIG, "training.checkpoint_every_steps": 1})
    train_and_evaluate(config, str(tmp_path), dataset)
    metadata = tmp_path / "checkpoints" / "4" / "state" / "_METADATA"
    text = metadata.read_text()
    assert '"value_metadata"' in text
    metadata.write_text(text.replace('"value_metadata"', '"value_metadatb"'))  # Still JSON.
    state, progress = _restore(tmp_path, config, dataset)
    assert int(state.step) == 3
    assert os.listdir(tmp_path / checkpoint.QUARANTINE_DIR)[0].startswith("checkpoints_4_")


def _with_inf_batch_stats(state):
    stats = jax.tree.map(lambda x: jnp.full_like(x, jnp.inf), state.batch_stats)
    return state.replace(batch_stats=stats)


def test_a_non_finite_state_is_never_saved_and_never_restored(tmp_path, dataset):
    config = tiny_config(**CONFIG)
    trainer = Trainer(config, dataset)
    good = trainer.create_state()
    bad = _with_inf_batch_stats(good)
    checkpointer = Checkpointer(str(tmp_path), 10)
    try:
        checkpointer.save(1, good, {})
        with pytest.raises(checkpoint.NonFiniteStateError, match=r"step 2: .*\['var'\]"):
            checkpointer.save(2, bad, {})
        checkpointer.wait()
        assert checkpointer.manager.all_steps() == [1]
        # A non-finite step written by other means (with valid checksums) counts as damaged.
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(bad), progress=ocp.args.JsonSave({}),
            integrity=ocp.args.JsonSave({"checksums": integrity.state_checksums(bad)}),
        )  # fmt: skip
        checkpointer.manager.save(3, args=args)
        checkpointer.wait()
        state, _ = checkpointer.restore(trainer.abstract_state())
    finally:
        checkpointer.close()
    assert int(state.step) == 0  # Step 1's state is the fresh one.
    _assert_trees_equal(jax.device_get(state), jax.device_get(good))
    assert os.listdir(tmp_path / checkpoint.QUARANTINE_DIR)[0].startswith("checkpoints_3_")


def test_keeps_the_latest_steps_and_the_best_one(tmp_path, dataset):
    config = tiny_config(**CONFIG)
    state = Trainer(config, dataset).create_state()
    checkpointer = Checkpointer(str(tmp_path), 2)
    try:
        for step in range(1, 7):
            checkpointer.save(step, state, {"best_step": 2})
        checkpointer.wait()
        assert checkpointer.manager.all_steps() == [2, 5, 6]
        assert (
            int(checkpointer.restore_step(2, Trainer(config, dataset).abstract_state())[0].step)
            == 0
        )
    finally:
        checkpointer.close()
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        Checkpointer(str(tmp_path), 0)


def test_checkpoints_with_the_older_batch_norm_names_restore_renamed(tmp_path, dataset):
    """A train state, its variables and converted weights saved when batch norms were
    called `BatchNorm_N` restore into models whose batch norms are `NormAct_N` layers."""
    config = tiny_config(**CONFIG)
    trainer = Trainer(config, dataset)
    state = jax.device_get(trainer.create_state())
    older = old_names.rename_modules(state, {"NormAct_": "BatchNorm_"})
    assert "'NormAct_0'" in str(jax.tree.structure(state))
    assert "'BatchNorm_0'" in str(jax.tree.structure(older))
    checkpointer = Checkpointer(str(tmp_path / "run"), 10)
    try:
        checkpointer.save(1, older, {})
        checkpointer.wait()
        restored, _ = checkpointer.restore(trainer.abstract_state())
    finally:
        checkpointer.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    _assert_trees_equal(jax.device_get(restored), state)

    abstract = trainer.abstract_state()
    variables = checkpoint.restore_variables(
        str(tmp_path / "run"), 1, {"params": abstract.params, "batch_stats": abstract.batch_stats}
    )
    _assert_trees_equal(variables, {"params": state.params, "batch_stats": state.batch_stats})

    convert.save_pretrained(
        str(tmp_path / "converted"), {"params": older.params, "batch_stats": older.batch_stats}, {}
    )
    pretrained, _ = convert.load_pretrained(str(tmp_path / "converted"))
    _assert_trees_equal(pretrained, {"params": state.params, "batch_stats": state.batch_stats})


@pytest.mark.slow
def test_restore_into_another_mesh_shape_is_identical(tmp_path, dataset):
    """A state saved split over fsdp groups restores replicated, split otherwise, or on fewer
    devices (the targets carry the new shardings), and back."""
    layouts = {"split 4 of 8": (8, 4), "replicated on 8": (8, 1), "split 2 of 4": (4, 2)}
    devices = jax.devices()
    for name, (count, fsdp) in (("split 4 of 8", (8, 4)), ("replicated on 8", (8, 1))):
        config = tiny_config(**CONFIG, **{"mesh.fsdp": fsdp, "mesh.fsdp_min_bytes": 0})
        workdir = tmp_path / name.replace(" ", "_")
        train_and_evaluate(config, str(workdir), dataset, devices=devices[:count])
        saved, _ = _restore(workdir, config, dataset, devices[:count])
        for other, (other_count, other_fsdp) in layouts.items():
            if other == name:
                continue
            other_config = tiny_config(**CONFIG, **{"mesh.fsdp": other_fsdp,
                                                    "mesh.fsdp_min_bytes": 0})  # fmt: skip
            restored, _ = _restore(workdir, other_config, dataset, devices[:other_count])
            kernel = jax.tree.leaves(restored.params)[0]
            assert len(kernel.sharding.device_set) == other_count
            wanted = Trainer(other_config, dataset, devices[:other_count]).state_sharding
            assert kernel.sharding.spec == jax.tree.leaves(wanted.params)[0].spec
            _assert_trees_equal(saved, restored)


@pytest.mark.slow
def test_one_changed_byte_in_any_file_of_a_step_falls_back_or_is_harmless(tmp_path, dataset):
    """Every file of the newest step in turn, one byte changed (the middle one, and the
    first): the restore either falls back to the older step, or returns exactly what was
    saved. The progress record is checksummed too: an edited best_metric is refused."""
    config = tiny_config(**CONFIG)
    train_and_evaluate(config, str(tmp_path / "run"), dataset)
    expected, expected_progress = _restore(tmp_path / "run", config, dataset)
    step_dir = tmp_path / "run" / "checkpoints" / "4"
    files = sorted(os.path.relpath(os.path.join(root, name), step_dir)
                   for root, _, names in os.walk(step_dir) for name in names)  # fmt: skip
    assert "progress/metadata" in files and len(files) >= 8
    trainer = Trainer(config, dataset)
    outcomes = {}
    for name in files:
        for where in ("middle", "first"):
            work = tmp_path / "copy"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(tmp_path / "run", work)
            path = work / "checkpoints" / "4" / name
            data = bytearray(path.read_bytes())
            if not data:
                continue
            data[len(data) // 2 if where == "middle" else 0] ^= 0x01
            path.write_bytes(bytes(data))
            checkpointer = Checkpointer(str(work), 10)
            try:
                state, progress = checkpointer.restore(trainer.abstract_state())
            finally:
                checkpointer.close()
            if int(state.step) == 2:
                outcomes[name, where] = "fell back"
                continue
            outcomes[name, where] = "harmless"
            assert int(state.step) == 4, name
            _assert_trees_equal(state, expected)
            assert progress == expected_progress, name
    assert outcomes["progress/metadata", "middle"] == "fell back"
    assert all(v == "fell back" for (n, _), v in outcomes.items() if n.startswith("state/d/"))


def test_an_edited_best_step_is_not_followed_by_predict(tmp_path, dataset):
    import json

    from imgcls_jax.training import trained_model

    config = tiny_config(**{**CONFIG, "training.eval_every_epochs": 0.25})
    train_and_evaluate(config, str(tmp_path), dataset)
    progress_file = tmp_path / "checkpoints" / "4" / "progress" / "metadata"
    progress = json.loads(progress_file.read_text())
    best = progress["best_step"]
    progress["best_step"] = 2 if best != 2 else 4
    progress_file.write_text(json.dumps(progress))
    with pytest.raises(CheckpointRestoreError, match="checksum mismatch in the progress record"):
        checkpoint.read_progress(str(tmp_path), 4)
    # The newest intact record (step 2's) names the best step instead.
    assert trained_model.choose_step(str(tmp_path), "best") == checkpoint.read_progress(
        str(tmp_path), 2
    ).get("best_step", 2)


def test_a_damaged_array_index_falls_back_quietly(tmp_path, dataset, capfd, caplog):
    """A changed byte in the OCDBT manifest is found before Orbax's concurrent reads start,
    so none of them reports into a closed event loop."""
    config = tiny_config(**CONFIG)
    train_and_evaluate(config, str(tmp_path), dataset)
    manifest = tmp_path / "checkpoints" / "4" / "state" / "manifest.ocdbt"
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    manifest.write_bytes(bytes(data))
    capfd.readouterr()
    state, _ = _restore(tmp_path, config, dataset)
    assert int(state.step) == 2
    assert 'manifest.ocdbt": Error decoding manifest: CRC-32C checksum' in caplog.text
    assert "Event loop is closed" not in capfd.readouterr().err
