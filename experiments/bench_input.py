"""Benchmark: can the host feed the step from real JPEGs? Decode rate per core, and whether a
training step waits for its input.

It writes an ImageNet-like folder of real photos (scikit-image's, randomly cropped and
resized to 250-450 px, JPEG quality 90) and the same JPEG bytes as a TFDS dataset (TFRecord
shards, as `tfds build` writes ImageNet), then streams each the way `dataset.streaming=True`
does: decode, shorter side to --image_size, centre crop, batch, prefetch in a thread.

1. Host decode rate of each source with 1 and with all decode threads: images/s, and per core;
   and how fast the TFRecord index (one pass reading every record's label) is built.
2. A training loop fed from each stream vs the same loop on one batch kept on the device: time
   per step and the time each step waited in `next()` for its batch.

    python experiments/bench_input.py                  # 224 px, ResNet-18, batch 32
    python experiments/bench_input.py --images=256 --steps=4 --model=resnet8 --width=8

Prints tables and writes JSON to --out.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 1024, "JPEGs to write and decode.")
flags.DEFINE_integer("image_size", 224, "Decoded (square) size.")
flags.DEFINE_string("model", "resnet18", "Model of the training loop.")
flags.DEFINE_integer("width", 64, "Its width.")
flags.DEFINE_integer("batch_size", 32, "Global batch of the training loop.")
flags.DEFINE_integer("steps", 8, "Timed training steps per loop.")
flags.DEFINE_integer("threads", 0, "Decode threads; 0: one per CPU core.")
flags.DEFINE_string("out", "experiments/results/bench_input.json", "Where to write the JSON.")

# Photos bundled with scikit-image (no download); camera is grayscale, repeated to RGB.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel", "camera")  # fmt: skip
CLASSES = 10
TFDS_NAME = "bench_jpegs"
SOURCE_NAMES = {"folder": "an image folder", "tfds": "TFDS TFRecords"}


def write_jpegs(root: str, count: int, seed: int = 0) -> None:
    """`count` JPEGs in CLASSES folders: random crops of real photos at 250-450 px."""
    import numpy as np
    import PIL.Image
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]
    photos = [(p if p.ndim == 3 else np.repeat(p[..., None], 3, -1))[..., :3] for p in photos]
    for label in range(CLASSES):
        os.makedirs(os.path.join(root, f"class{label}"), exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(int(0.6 * h), h + 1), rng.integers(int(0.6 * w), w + 1)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = PIL.Image.fromarray(photo[top : top + ch, left : left + cw].astype(np.uint8))
        short = int(rng.integers(250, 451))
        scale = short / min(crop.size)
        crop = crop.resize((round(crop.size[0] * scale), round(crop.size[1] * scale)))
        crop.save(os.path.join(root, f"class{i % CLASSES}", f"{i:05d}.jpg"), quality=90)


def store_as_tfds(root: str, data_dir: str, shards: int = 4) -> None:
    """The folder's JPEG files, byte for byte, as TFDS dataset `bench_jpegs` in `data_dir`."""
    from imgcls_jax.data.image_folder import list_image_folder
    from imgcls_jax.data.tfds_source import write_dataset

    images, labels, class_names = list_image_folder(root, FLAGS.image_size)
    examples = [{"image": path, "label": label} for path, label in zip(images.items, labels)]
    write_dataset(TFDS_NAME, data_dir, {"train": examples}, class_names, (None, None, 3),
                  "jpeg", shards)  # fmt: skip


def stream(source: str, roots: dict, threads: int):
    """The images of source ("folder" or "tfds", stored under roots[source]), left encoded."""
    from imgcls_jax.data import tfds_source
    from imgcls_jax.data.image_folder import list_image_folder

    if source == "folder":
        return list_image_folder(roots["folder"], FLAGS.image_size, 3, threads)[0]
    return tfds_source.list_split(TFDS_NAME, "train", roots["tfds"], False,
                                  FLAGS.image_size, 3, threads)[0]  # fmt: skip


def index_rates(roots: dict, threads: int) -> tuple[float, float]:
    """Records/s building the TFRecord index (every record read for its label; the files are
    in the page cache), then reading back the index saved beside each file."""
    import glob

    from imgcls_jax.data.tfrecord_index import INDEX_SUFFIX

    stream("tfds", roots, threads)  # Warm: TF's import, the page cache.
    for saved in glob.glob(os.path.join(roots["tfds"], "**", "*" + INDEX_SUFFIX), recursive=True):
        os.remove(saved)
    rates = []
    for _ in range(2):  # Builds and saves the index, then reads it back.
        start = time.perf_counter()
        count = len(stream("tfds", roots, threads))
        rates.append(count / (time.perf_counter() - start))
    return rates[0], rates[1]


def decode_rate(source: str, roots: dict, threads: int) -> float:
    """Images/s decoding the whole source with `threads` threads (second of two passes)."""
    import numpy as np

    images = stream(source, roots, threads)
    everything = np.arange(len(images))
    np.asarray(images[everything[: 4 * threads]])  # Warm the pool.
    start = time.perf_counter()
    np.asarray(images[everything])
    return len(images) / (time.perf_counter() - start)


def worker_rate(roots: dict, workers: int, batches: int = 16) -> float:
    """Images/s of train batches read from the image folder by Grain in `workers` processes
    (one decode thread each), after the first batch (the workers' start)."""
    import numpy as np

    from imgcls_jax import input_pipeline
    from imgcls_jax.data import Split, batch_rows

    images = stream("folder", roots, 1)
    split = Split(images, np.zeros(len(images), np.int32))
    order = batch_rows.TrainOrder(len(images), FLAGS.batch_size, seed=0)
    host = input_pipeline.host_train_batches(split, order, 0, prefetch=2, workers=workers)
    next(host)
    start = time.perf_counter()
    for _ in range(batches):
        next(host)
    rate = batches * FLAGS.batch_size / (time.perf_counter() - start)
    host.close()
    return rate


def training_loop(source: str | None, roots: dict) -> dict:
    """Seconds per step and per step waiting for input, through the Trainer's own step."""
    import jax

    from configs.resnet import get_config
    from imgcls_jax import data, input_pipeline
    from imgcls_jax.config import apply_overrides
    from imgcls_jax.trainer import Trainer

    name = TFDS_NAME if source == "tfds" else "image_folder"
    data_dir = roots["tfds"] if source == "tfds" else roots["folder"]
    config = apply_overrides(get_config(), {
        "dataset.name": name, "dataset.data_dir": data_dir, "dataset.test_split": "",
        "dataset.image_size": FLAGS.image_size, "dataset.validation_size": 2 * CLASSES,
        "dataset.mean": (0.5,) * 3, "dataset.std": (0.25,) * 3, "dataset.streaming": True,
        "dataset.decode_threads": FLAGS.threads, "model.name": FLAGS.model,
        "model.width": FLAGS.width, "model.stem": "imagenet", "augment.train": "flip_lr",
        "augment.grid_images": 0, "input.batch_size": FLAGS.batch_size,
        "input.eval_batch_size": FLAGS.batch_size, "input.device_resident": "off",
    })  # fmt: skip
    trainer = Trainer(config, data.load_dataset(config.dataset))
    state = trainer.create_state()
    batches = input_pipeline.train_batches(trainer.dataset.train, trainer.order, 0,
                                           trainer.mesh, config.input.prefetch)  # fmt: skip
    fixed = next(batches)
    state, _ = trainer.train_step(state, fixed, trainer.train_key)  # Compile.
    jax.block_until_ready(state)
    waits, start = [], time.perf_counter()
    for _ in range(FLAGS.steps):
        before = time.perf_counter()
        batch = next(batches) if source else fixed
        waits.append(time.perf_counter() - before)
        state, _ = trainer.train_step(state, batch, trainer.train_key)
        jax.block_until_ready(state)  # So a wait cannot hide behind asynchronous dispatch.
    step_s = (time.perf_counter() - start) / FLAGS.steps
    batches.close()
    return {"input": f"JPEGs streamed from {SOURCE_NAMES[source]}" if source else
                     "one batch on device",
            "step_s": round(step_s, 3), "img_per_s": round(FLAGS.batch_size / step_s, 1),
            "wait_per_step_s": round(statistics.mean(waits), 4),
            "waited_fraction": round(sum(waits) / (step_s * FLAGS.steps), 3)}  # fmt: skip


def main(argv):
    del argv
    from imgcls_jax import markdown

    cores = os.cpu_count() or 1
    threads = FLAGS.threads or cores
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"folder": os.path.join(tmp, "folder"), "tfds": os.path.join(tmp, "tfds")}
        write_jpegs(roots["folder"], FLAGS.images)
        store_as_tfds(roots["folder"], roots["tfds"])
        megabytes = sum(os.path.getsize(os.path.join(d, f))
                        for d, _, fs in os.walk(roots["folder"]) for f in fs) / 2**20  # fmt: skip
        rates = {(source, n): decode_rate(source, roots, n)
                 for source in SOURCE_NAMES for n in sorted({1, threads})}  # fmt: skip
        worker_rates = {n: worker_rate(roots, n) for n in sorted({1, 2, cores})}
        indexed, cached = index_rates(roots, threads)
        loops = [training_loop(source, roots) for source in (None, *SOURCE_NAMES)]
    print(f"{FLAGS.images} JPEGs, {megabytes / FLAGS.images * 1024:.0f} KiB each on average, "
          f"decoded to {FLAGS.image_size} px on {cores} cores.\n")  # fmt: skip
    print(markdown.table(
        ["source", "decode threads", "images/s", "images/s per core"],
        [[SOURCE_NAMES[s], n, f"{r:.0f}", f"{r / min(n, cores):.0f}"]
         for (s, n), r in rates.items()],
    ))  # fmt: skip
    print("\nTrain batches read by Grain worker processes (one decode thread each):\n")
    print(markdown.table(
        ["worker processes", "images/s", "images/s per worker", "vs 1 worker"],
        [[n, f"{r:.0f}", f"{r / n:.0f}", f"{r / worker_rates[1]:.2f}x"]
         for n, r in worker_rates.items()],
    ))  # fmt: skip
    print(f"\nTFRecord index ({threads} threads): built at {indexed:.0f} records/s, read back "
          f"from the saved index at {cached:.0f} records/s.\n")  # fmt: skip
    print()
    print(markdown.table(
        ["input", "s/step", "img/s", "waited per step (s)", "share of step waiting"],
        [[r["input"], r["step_s"], r["img_per_s"], r["wait_per_step_s"],
          f"{100 * r['waited_fraction']:.1f}%"] for r in loops],
    ))  # fmt: skip
    per_core = rates["tfds", 1]
    print(
        f"\nAt {per_core:.0f} images/s per core, 6,000 images/s (the H200 target) needs "
        f"{6000 / per_core:.0f} decoding cores."
    )
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w", encoding="utf-8") as f:
        json.dump({"images": FLAGS.images, "image_size": FLAGS.image_size, "cores": cores,
                   "model": FLAGS.model, "batch_size": FLAGS.batch_size,
                   "decode_img_per_s": {f"{s}/{n}": round(r, 1) for (s, n), r in rates.items()},
                   "grain_workers_img_per_s": {n: round(r, 1) for n, r in worker_rates.items()},
                   "tfrecord_index_records_per_s": round(indexed, 1),
                   "tfrecord_index_cached_records_per_s": round(cached, 1),
                   "loops": loops}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    app.run(main)
