"""Tests for imgcls_jax.data.image_folder on a tiny folder of real PNG/JPEG files."""

from __future__ import annotations

import io
import logging
import pathlib
import re

import numpy as np
import PIL.Image
import pytest

from imgcls_jax.data.image_folder import ImageFolderData, load_image_folder

RED, YELLOW, GREEN, BLUE = (255, 0, 0), (240, 200, 20), (0, 200, 0), (0, 0, 255)
SIZE = 8
BAD_FILES = ("banana/broken.jpg", "cherry/half.png")


def _stripes(size: tuple[int, int], colours: tuple, axis: int) -> PIL.Image.Image:
    """Three equal stripes along `axis` (0: rows, 1: columns) of an image of (width, height)."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    n = (h, w)[axis] // 3
    for i, colour in enumerate(colours):
        idx = [slice(None), slice(None)]
        idx[axis] = slice(i * n, (i + 1) * n)
        arr[tuple(idx)] = colour
    return PIL.Image.fromarray(arr)


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    """apple: red PNGs; banana: yellow JPEGs, corrupt .jpg; cherry: striped PNGs, truncated PNG."""
    for name in ("apple", "banana", "cherry"):
        (tmp_path / name).mkdir()
    PIL.Image.new("RGB", (12, 12), RED).save(tmp_path / "apple/a0.png")
    PIL.Image.new("RGB", (5, 7), RED).save(tmp_path / "apple/a1.png")  # upscaled, non-square
    (tmp_path / "apple/notes.txt").write_text("not an image")
    PIL.Image.new("RGB", (16, 16), YELLOW).save(tmp_path / "banana/b0.jpg", quality=95)
    PIL.Image.new("RGB", (10, 20), YELLOW).save(tmp_path / "banana/b1.JPEG", "JPEG", quality=95)
    rng = np.random.default_rng(0)
    (tmp_path / "banana/broken.jpg").write_bytes(rng.integers(0, 256, 2000, np.uint8).tobytes())
    # Wide: 24x8 needs no resize, the centre crop keeps exactly the green middle stripe.
    _stripes((24, 8), (RED, GREEN, BLUE), axis=1).save(tmp_path / "cherry/c0.PNG")
    # Tall: 16x48 is downscaled to 8x24, the crop keeps the green middle stripe (blurred edges).
    _stripes((16, 48), (RED, GREEN, BLUE), axis=0).save(tmp_path / "cherry/c1.png")
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "PNG")
    (tmp_path / "cherry/half.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "README.md").write_text("files at the root are not classes")
    return tmp_path


def test_shapes_labels_and_classes(root: pathlib.Path) -> None:
    data = load_image_folder(str(root), SIZE)
    assert isinstance(data, ImageFolderData)
    assert data.images.shape == (6, SIZE, SIZE, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int32
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.class_names == ("apple", "banana", "cherry")


def test_pixel_values(root: pathlib.Path) -> None:
    images = load_image_folder(str(root), SIZE).images
    np.testing.assert_array_equal(images[0], np.broadcast_to(RED, (SIZE, SIZE, 3)))
    np.testing.assert_array_equal(images[1], np.broadcast_to(RED, (SIZE, SIZE, 3)))
    for jpeg in images[2:4]:
        assert np.abs(jpeg.astype(int) - YELLOW).max() <= 4
    np.testing.assert_array_equal(images[4], np.broadcast_to(GREEN, (SIZE, SIZE, 3)))
    tall = images[5].astype(int)
    np.testing.assert_array_equal(tall[2:6], np.broadcast_to(GREEN, (4, SIZE, 3)))
    assert (tall[..., 1] > tall[..., 0]).all() and (tall[..., 1] > tall[..., 2]).all()


@pytest.mark.parametrize("image_size", [4, 13, 32])
def test_resize_non_square(root: pathlib.Path, image_size: int) -> None:
    images = load_image_folder(str(root), image_size).images
    assert images.shape == (6, image_size, image_size, 3)
    np.testing.assert_array_equal(images[1], np.broadcast_to(RED, (image_size, image_size, 3)))


def test_grayscale(root: pathlib.Path) -> None:
    images = load_image_folder(str(root), SIZE, channels=1).images
    assert images.shape == (6, SIZE, SIZE, 1) and images.dtype == np.uint8
    red_l = PIL.Image.new("RGB", (1, 1), RED).convert("L").getpixel((0, 0))
    assert (images[0] == red_l).all()


def test_bad_files_skipped_and_logged(root: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        data = load_image_folder(str(root), SIZE)
    assert data.skipped == BAD_FILES
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # Files that are not images, then images that cannot be read.
    assert "Skipped 1 file(s)" in warnings[0] and "apple/notes.txt" in warnings[0]
    assert "2" in warnings[1] and all(path in warnings[1] for path in BAD_FILES)


def test_strict_raises_naming_bad_files(root: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="2 unreadable") as err:
        load_image_folder(str(root), SIZE, strict=True)
    assert all(path in str(err.value) for path in BAD_FILES)


def test_deterministic(root: pathlib.Path) -> None:
    a, b = load_image_folder(str(root), SIZE), load_image_folder(str(root), SIZE)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.skipped == b.skipped and a.class_names == b.class_names


def test_missing_root(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape("ROOT/cat/0001.jpg")):
        load_image_folder(str(tmp_path / "nope"), SIZE)


def test_root_without_class_folders(tmp_path: pathlib.Path) -> None:
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class subfolders.*ROOT/cat/0001.jpg"):
        load_image_folder(str(tmp_path), SIZE)


def test_class_folders_without_images(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat/notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(str(tmp_path), SIZE)


def test_all_unreadable(tmp_path: pathlib.Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could be decoded"):
        load_image_folder(str(tmp_path), SIZE)


def test_an_empty_class_or_a_single_class_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cat").mkdir()
    PIL.Image.new("RGB", (4, 4), RED).save(tmp_path / "cat/0.png")
    with pytest.raises(ValueError, match="has one class, 'cat'; a classifier needs at least 2"):
        load_image_folder(str(tmp_path), SIZE)
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match=r"Class folder\(s\) \['dog'\] .* hold no image files"):
        load_image_folder(str(tmp_path), SIZE)


def _mode_folder(root: pathlib.Path) -> dict[str, np.ndarray]:
    """One class per pixel format a user may have, each 8x8, and the uint8 gray image that a
    correct conversion gives."""
    ramp = np.arange(64, dtype=np.int64).reshape(8, 8)
    wide = (ramp * 1040).astype(np.uint16)  # 0-65520: 16-bit values, almost all above 255.
    alpha = (ramp * 4).astype(np.uint8)
    expected = {"sixteen": ((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)}
    images = {"sixteen": PIL.Image.fromarray(wide)}
    images["gray_alpha"] = PIL.Image.fromarray(
        np.stack([np.full((8, 8), 200, np.uint8), alpha], -1), "LA"
    )
    expected["gray_alpha"] = ((200 * alpha.astype(np.int64) + 127) // 255).astype(np.uint8)
    palette = PIL.Image.fromarray((ramp % 2).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0  # Index 0 (white) is transparent: black after compositing.
    images["palette"], expected["palette"] = palette, np.zeros((8, 8), np.uint8)
    for name, image in images.items():
        (root / name).mkdir(parents=True)
        image.save(root / name / "0.png")
    (root / "cmyk").mkdir()
    PIL.Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(root / "cmyk" / "0.jpg", quality=100)
    expected["cmyk"] = np.full((8, 8), 255, np.uint8)  # No ink: white.
    return expected


@pytest.mark.parametrize("streaming", [False, True])
def test_every_pixel_format_is_converted_not_clipped(tmp_path: pathlib.Path, streaming) -> None:
    from imgcls_jax.data.image_folder import list_image_folder

    expected = _mode_folder(tmp_path)
    if streaming:
        images, labels, names = list_image_folder(str(tmp_path), 8, channels=1)
        images = np.asarray(images)
    else:
        data = load_image_folder(str(tmp_path), 8, channels=1, strict=True)
        images, labels, names = data.images, data.labels, data.class_names
    for label, name in enumerate(names):
        got = images[labels == label][0, ..., 0].astype(int)
        np.testing.assert_allclose(got, expected[name], atol=1, err_msg=name)


def test_float_and_32_bit_pixels_are_refused_by_name() -> None:
    from imgcls_jax.data.decode import UnsupportedImageError, decode_named, to_8_bit

    floats = PIL.Image.fromarray(np.ones((4, 4), np.float32))
    with pytest.raises(UnsupportedImageError, match="float pixels"):
        to_8_bit(floats, "L")
    buf = io.BytesIO()
    floats.save(buf, "TIFF")
    with pytest.raises(UnsupportedImageError, match=r"^scan\.tif: 32-bit float .* or remove it"):
        decode_named(io.BytesIO(buf.getvalue()), "scan.tif", 4, "L")
    with pytest.raises(UnsupportedImageError, match="outside 0-65535"):
        to_8_bit(PIL.Image.fromarray(np.full((4, 4), 70000, np.int32)), "RGB")
    small = to_8_bit(PIL.Image.fromarray(np.full((4, 4), 65535, np.int32)), "RGB")
    assert np.asarray(small).min() == 255


def test_channels_are_inferred_and_checked_against_the_normalisation(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jax
    from conftest import tiny_config

    from imgcls_jax.data.image_folder import list_image_folder
    from imgcls_jax.training.builder import Trainer

    assert load_image_folder(str(root), SIZE, channels=0).images.shape[-1] == 3
    assert list_image_folder(str(root), SIZE, channels=0)[0].shape[-1] == 3
    gray = root.parent / "gray"
    for name in ("a", "b"):
        (gray / name).mkdir(parents=True)
        PIL.Image.new("L", (6, 6), 9).save(gray / name / "0.png")
    assert load_image_folder(str(gray), SIZE, channels=0).images.shape[-1] == 1

    folder = {"dataset.name": "image_folder", "dataset.data_dir": str(root),
              "dataset.image_size": SIZE, "dataset.validation_size": 1, "dataset.test_split": "",
              "dataset.train_size": 0, "input.batch_size": 4, "model.kernels": "xla"}  # fmt: skip
    from imgcls_jax.data import image_folder

    with monkeypatch.context() as patched:  # Found from the headers, before any decoding.
        patched.setattr(image_folder, "load_image_folder", None)
        with pytest.raises(ValueError, match=r"images have 3 channel\(s\) but config.dataset."
                           r"mean/std have 1 entries.*config.dataset.channels=1"):  # fmt: skip
            Trainer(tiny_config(**folder), devices=jax.devices()[:1])
    trainer = Trainer(tiny_config(**folder, **{"dataset.channels": 1}), devices=jax.devices()[:1])
    assert trainer.image_shape == (SIZE, SIZE, 1)


def test_every_format_pillow_reads_is_taken_and_other_files_are_named(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        PIL.Image.new("RGB", (6, 6), RED).save(tmp_path / name / "0.tif")
        PIL.Image.new("RGB", (6, 6), RED).save(tmp_path / name / "1.webp", lossless=True)
        PIL.Image.new("RGB", (6, 6), RED).save(tmp_path / name / "2.bmp")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING):
        folder = load_image_folder(str(tmp_path), SIZE)
    assert len(folder.labels) == 6 and folder.skipped == ()
    assert (folder.images[..., 0] == 255).all()  # Every one decoded (red).
    assert "Skipped 1 file(s)" in caplog.text and "a/notes.txt" in caplog.text
    assert ".DS_Store" not in caplog.text  # Hidden files are not images, and not news.
