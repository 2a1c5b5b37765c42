"""Benchmark: can the host feed the step from ImageNet-size JPEGs? Decode rate per core, scaling
over Grain worker processes, and whether a training step waits for its input.

It writes JPEGs of ImageNet's size distribution (random crops of scikit-image's photos, the
longer side 400-500 px, the shorter 0.66-0.8 of it, JPEG quality 90) as an image folder and,
where TFDS is installed, the same bytes as a TFDS dataset in array_record files; then reads
each as `dataset.streaming=True` does: decode, centre square resized to --image_size, batch.

1. Decode rate in the training process with 1 and with all decode threads.
2. Train batches read by Grain in 1, 2 and all-core worker processes (one thread each):
   images/s, per worker, and the scaling over 1 worker.
3. How fast streaming TFDS reads every record's label on start (records/s).
4. A training loop fed from each stream (Grain workers, one per core) vs the same loop on one
   batch kept on the device: time per step and the time each step waited for its batch.

    python -m experiments.benchmarks.input_pipeline                  # 224 px, ResNet-18, batch 32
    python -m experiments.benchmarks.input_pipeline --images=256 --steps=4 --model=resnet8 --width=8

Prints tables and writes JSON to --out.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import statistics
import tempfile
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 2000, "JPEGs to write and decode.")
flags.DEFINE_integer("image_size", 224, "Decoded (square) size.")
flags.DEFINE_string("model", "resnet18", "Model of the training loop.")
flags.DEFINE_integer("width", 64, "Its width.")
flags.DEFINE_string("dtype", "auto", "Its compute dtype (model.dtype).")
flags.DEFINE_integer("batch_size", 32, "Global batch of the training loop and of Grain's reads.")
flags.DEFINE_integer("steps", 8, "Timed training steps per loop.")
flags.DEFINE_integer("worker_batches", 64, "Timed batches per Grain worker count.")
flags.DEFINE_integer("threads", 0, "Decode threads and worker processes; 0: one per CPU core.")
flags.DEFINE_list("sources", [], "folder and/or tfds; default both where TFDS is installed.")
common.define_out("experiments/results/benchmarks/input_pipeline.json")
flags.DEFINE_string("photos", "", "An .npz of the photos (from --save_photos); '': scikit-image.")
flags.DEFINE_string(
    "save_photos",
    "",
    "Only save the photos to this .npz (for a machine without scikit-image) and exit.",
)

# Photos bundled with scikit-image (no download); camera is grayscale, repeated to RGB.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel", "camera")  # fmt: skip
CLASSES = 10
TFDS_NAME = "bench_jpegs"
SOURCE_NAMES = {"folder": "an image folder", "tfds": "TFDS array_record"}


def load_photos() -> list:
    """scikit-image's photos as RGB uint8 arrays (from --photos when given)."""
    import numpy as np

    if FLAGS.photos:
        with np.load(FLAGS.photos) as saved:
            return [saved[name] for name in PHOTOS]
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]
    return [(p if p.ndim == 3 else np.repeat(p[..., None], 3, -1))[..., :3] for p in photos]


def write_jpegs(root: str, count: int, seed: int = 0) -> None:
    """`count` JPEGs in CLASSES folders: random crops of real photos, ImageNet-sized."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    photos = load_photos()
    for label in range(CLASSES):
        os.makedirs(os.path.join(root, f"class{label}"), exist_ok=True)
    plans = []
    for i in range(count):
        h, w = photos[i % len(photos)].shape[:2]
        ch, cw = rng.integers(int(0.6 * h), h + 1), rng.integers(int(0.6 * w), w + 1)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        longer = int(rng.integers(400, 501))
        shorter = int(longer * rng.uniform(0.66, 0.8))
        size = (longer, shorter) if rng.random() < 0.75 else (shorter, longer)  # (w, h)
        plans.append((i, (top, left, ch, cw), size))

    def write(plan) -> None:
        i, (top, left, ch, cw), size = plan
        photo = photos[i % len(photos)][top : top + ch, left : left + cw]
        image = PIL.Image.fromarray(photo.astype(np.uint8)).resize(size, PIL.Image.BICUBIC)
        image.save(os.path.join(root, f"class{i % CLASSES}", f"{i:05d}.jpg"), quality=90)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, plans))


def store_as_tfds(root: str, data_dir: str, shards: int = 4) -> None:
    """The folder's JPEG files, byte for byte, as TFDS dataset `bench_jpegs` in `data_dir`,
    prepared in array_record files."""
    from imgcls_jax.data.image_folder import list_image_folder
    from imgcls_jax.data.tfds_source import write_dataset

    images, labels, class_names = list_image_folder(root, FLAGS.image_size)
    examples = [{"image": path, "label": label} for path, label in zip(images.items, labels)]
    write_dataset(TFDS_NAME, data_dir, {"train": examples}, class_names, (None, None, 3),
                  "jpeg", shards, file_format="array_record")  # fmt: skip


def stream(source: str, roots: dict, threads: int):
    """The train split of `source` ("folder" or "tfds"), left encoded."""
    from imgcls_jax.data import Split, tfds_source
    from imgcls_jax.data.image_folder import list_image_folder

    if source == "folder":
        images, labels, _ = list_image_folder(roots["folder"], FLAGS.image_size, 3, threads)
    else:
        images, labels, _ = tfds_source.list_split(TFDS_NAME, "train", roots["tfds"], False,
                                                   FLAGS.image_size, 3, threads)  # fmt: skip
    return Split(images, labels)


def label_rate(roots: dict, threads: int) -> float:
    """Records/s reading every record's label, as streaming TFDS does on start (second of two
    passes: the files are in the page cache)."""
    stream("tfds", roots, threads)
    start = time.perf_counter()
    count = len(stream("tfds", roots, threads))
    return count / (time.perf_counter() - start)


def decode_rate(source: str, roots: dict, threads: int) -> float:
    """Images/s decoding the whole source with `threads` threads (second of two passes)."""
    import numpy as np

    images = stream(source, roots, threads).images
    everything = np.arange(len(images))
    np.asarray(images[everything[: 4 * threads]])  # Warm the pool.
    start = time.perf_counter()
    np.asarray(images[everything])
    return len(images) / (time.perf_counter() - start)


def worker_rate(source: str, roots: dict, workers: int) -> float:
    """Images/s of train batches read by Grain in `workers` processes (one decode thread
    each), once the batches read ahead during the workers' start are consumed."""
    from imgcls_jax.data import batch_rows, input_pipeline

    split = stream(source, roots, 1)
    order = batch_rows.TrainOrder(len(split), FLAGS.batch_size, seed=0)
    host = input_pipeline.host_train_batches(split, order, 0, prefetch=1, workers=workers)
    for _ in range(2 * workers + 1):  # Each worker's buffered batch and the one in hand.
        next(host)
    start = time.perf_counter()
    for _ in range(FLAGS.worker_batches):
        next(host)
    rate = FLAGS.worker_batches * FLAGS.batch_size / (time.perf_counter() - start)
    host.close()
    return rate


def training_loop(source: str | None, roots: dict) -> dict:
    """Seconds per step and per step waiting for input, through the Trainer's own step and
    its reading (input.workers: one Grain worker per core for a streamed split)."""
    import jax

    from configs.resnet import get_config
    from imgcls_jax import data
    from imgcls_jax.config import apply_overrides
    from imgcls_jax.data import input_pipeline
    from imgcls_jax.training.builder import Trainer

    name = TFDS_NAME if source == "tfds" else "image_folder"
    data_dir = roots["tfds"] if source == "tfds" else roots["folder"]
    config = apply_overrides(get_config(), {
        "dataset.name": name, "dataset.source": "tfds" if source == "tfds" else "image_folder",
        "dataset.data_dir": data_dir, "dataset.test_split": "",
        "dataset.image_size": FLAGS.image_size, "dataset.validation_size": 2 * CLASSES,
        "dataset.mean": (0.5,) * 3, "dataset.std": (0.25,) * 3, "dataset.streaming": True,
        "dataset.decode_threads": FLAGS.threads, "model.name": FLAGS.model,
        "model.width": FLAGS.width, "model.stem": "imagenet", "model.dtype": FLAGS.dtype,
        "augment.train": "flip_lr", "augment.grid_images": 0,
        "input.batch_size": FLAGS.batch_size, "input.eval_batch_size": FLAGS.batch_size,
        "input.device_resident": "off", "input.workers": FLAGS.threads or -1,
    })  # fmt: skip
    trainer = Trainer(config, data.load_dataset(config.dataset))
    state = trainer.create_state()
    split = trainer.dataset.train
    workers = input_pipeline.worker_count(config.input.workers, split)
    batches = input_pipeline.train_batches(split, trainer.order, 0, trainer.mesh,
                                           config.input.prefetch, workers)  # fmt: skip
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
            "workers": workers if source else 0,
            "step_s": round(step_s, 4), "img_per_s": round(FLAGS.batch_size / step_s, 1),
            "wait_per_step_s": round(statistics.mean(waits), 4),
            "waited_fraction": round(sum(waits) / (step_s * FLAGS.steps), 3)}  # fmt: skip


def chosen_sources() -> list[str]:
    if FLAGS.sources:
        return FLAGS.sources
    has_tfds = importlib.util.find_spec("tensorflow_datasets") is not None
    return ["folder", "tfds"] if has_tfds else ["folder"]


def main(argv):
    del argv
    if FLAGS.save_photos:
        import numpy as np

        np.savez_compressed(FLAGS.save_photos, **dict(zip(PHOTOS, load_photos())))
        return
    import jax

    from imgcls_jax.reporting import markdown

    cores = os.cpu_count() or 1
    threads = FLAGS.threads or cores
    sources = chosen_sources()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"folder": os.path.join(tmp, "folder"), "tfds": os.path.join(tmp, "tfds")}
        write_jpegs(roots["folder"], FLAGS.images)
        if "tfds" in sources:
            store_as_tfds(roots["folder"], roots["tfds"])
        files = [os.path.join(d, f) for d, _, fs in os.walk(roots["folder"]) for f in fs]
        kib = sum(map(os.path.getsize, files)) / len(files) / 1024
        rates = {(s, n): decode_rate(s, roots, n) for s in sources for n in sorted({1, threads})}
        worker_counts = sorted({1, 2, threads})
        worker_rates = {(s, n): worker_rate(s, roots, n) for s in sources for n in worker_counts}
        labels = label_rate(roots, threads) if "tfds" in sources else None
        loops = [training_loop(source, roots) for source in (None, *sources)]
    device = jax.devices()[0].device_kind
    print(f"{FLAGS.images} JPEGs, {kib:.0f} KiB each on average, decoded to {FLAGS.image_size} "
          f"px on {cores} cores; {FLAGS.model} on {device}.\n")  # fmt: skip
    print(markdown.table(
        ["source", "decode threads", "images/s", "images/s per core"],
        [[SOURCE_NAMES[s], n, f"{r:.0f}", f"{r / min(n, cores):.0f}"]
         for (s, n), r in rates.items()],
    ))  # fmt: skip
    print("\nTrain batches read by Grain worker processes (one decode thread each):\n")
    print(markdown.table(
        ["source", "worker processes", "images/s", "images/s per worker", "vs 1 worker"],
        [[SOURCE_NAMES[s], n, f"{r:.0f}", f"{r / n:.0f}", f"{r / worker_rates[s, 1]:.2f}x"]
         for (s, n), r in worker_rates.items()],
    ))  # fmt: skip
    if labels is not None:
        print(f"\nStreaming TFDS read every record's label ({threads} threads) at {labels:.0f} "
              "records/s.")  # fmt: skip
    print()
    print(markdown.table(
        ["input", "Grain workers", "s/step", "img/s", "waited per step (s)",
         "share of step waiting"],
        [[r["input"], r["workers"], r["step_s"], r["img_per_s"], r["wait_per_step_s"],
          f"{100 * r['waited_fraction']:.1f}%"] for r in loops],
    ))  # fmt: skip
    per_core = worker_rates[sources[0], 1]
    print(f"\nAt {per_core:.0f} images/s per worker, the step's rate on one batch "
          f"({loops[0]['img_per_s']:.0f} img/s) needs {loops[0]['img_per_s'] / per_core:.2f} "
          "decoding cores.")  # fmt: skip
    common.write_result(
        FLAGS.out,
        {
            "images": FLAGS.images,
            "kib_per_image": round(kib, 1),
            "image_size": FLAGS.image_size,
            "cores": cores,
            "device": device,
            "model": FLAGS.model,
            "batch_size": FLAGS.batch_size,
            "decode_img_per_s": {f"{s}/{n}": round(r, 1) for (s, n), r in rates.items()},
            "grain_workers_img_per_s": {
                f"{s}/{n}": round(r, 1) for (s, n), r in worker_rates.items()
            },
            "tfds_labels_records_per_s": labels and round(labels, 1),
            "loops": loops,
        },
    )


if __name__ == "__main__":
    app.run(main)
