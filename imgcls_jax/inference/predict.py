"""Top-k classes of image files and folders, from a training workdir or a converted checkpoint.

    python -m imgcls_jax.inference.predict --checkpoint=WORKDIR photos/ extra.jpg --output=preds.csv
    python -m imgcls_jax.inference.predict --checkpoint=pretrained/efficientnet_lite0 cat.jpg

A workdir's model (its best step by default) sees each image as in its evaluation: resized and
centre-cropped on the host to the training image size, then the config's evaluation pipeline
and normalisation. A converted checkpoint's: shorter side to input_size / 0.875, centre crop.
Unreadable files are named on stderr and skipped; the exit status is then 1.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence

from absl import app, flags, logging

from imgcls_jax.data.image_folder import IMAGE_EXTENSIONS

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A workdir of launch.py, or a converted checkpoint "
                    "directory (imgcls_jax.convert).", required=True)  # fmt: skip
flags.DEFINE_string("step", "best", "Workdirs: 'best' (by validation), 'latest' or a step.")
flags.DEFINE_enum("weights", "auto", ["auto", "ema", "trained"], "Workdirs: the weight "
                  "average ('auto': when the run kept one) or the trained weights.")  # fmt: skip
flags.DEFINE_integer("top", 5, "How many classes to report per image.")
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")
flags.DEFINE_string("output", "", "Also write the predictions to this .csv or .json file.")


def expand(paths: Sequence[str]) -> list[str]:
    """Files as given; folders replaced by the image files below them, sorted."""
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        for folder, _, names in sorted(os.walk(path)):
            files += [os.path.join(folder, n) for n in sorted(names)
                      if n.lower().endswith(IMAGE_EXTENSIONS)]  # fmt: skip
    return files


def output_problem(path: str) -> str | None:
    """Why `path` cannot be written (a missing or read-only folder, a read-only file, a
    folder in its place), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist; create it or choose another path."
    if os.path.isdir(path):
        return "is a folder; give a file name ending in .csv or .json."
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "the file is read-only; choose another path."
    if not os.path.exists(path) and not os.access(folder, os.W_OK):
        return f"the folder {folder} is read-only; choose another path."
    return None


def write_output(path: str, results: list) -> None:  # list[inference.Prediction]
    """CSV (one row per image and rank) or JSON (one object per image), by extension."""
    if path.endswith(".json"):
        records = [
            {"path": r.path, "error": r.error} if r.error else
            {"path": r.path, "top": [{"index": i, "name": n, "probability": p} for i, n, p
                                     in zip(r.indices, r.names, r.probabilities, strict=True)]}
            for r in results
        ]  # fmt: skip
        with open(path, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "rank", "class_index", "class_name", "probability", "error"])
        for r in results:
            if r.error:
                writer.writerow([r.path, "", "", "", "", r.error])
                continue
            for rank, (i, n, p) in enumerate(
                zip(r.indices, r.names, r.probabilities, strict=True), 1
            ):
                writer.writerow([r.path, rank, i, n, f"{p:.6f}", ""])


def main(argv):
    if not FLAGS["verbosity"].present:  # Only warnings besides the predictions.
        logging.set_verbosity(logging.WARNING)
    if FLAGS.output and not FLAGS.output.endswith((".csv", ".json")):
        raise app.UsageError(f"--output={FLAGS.output} must end in .csv or .json.")
    if FLAGS.output and (problem := output_problem(FLAGS.output)):
        sys.exit(f"predict: --output={FLAGS.output}: {problem}")  # Before any image is read.
    if FLAGS.top < 1 or FLAGS.batch_size < 1:
        raise app.UsageError("--top and --batch_size must be positive.")
    paths = expand(argv[1:])
    if not paths:
        raise app.UsageError("Give one or more image files or folders after the flags.")
    from imgcls_jax.inference.classifier import Classifier

    try:
        classifier = Classifier.load(FLAGS.checkpoint, FLAGS.step, FLAGS.weights)
    except ValueError as e:
        sys.exit(f"predict: {e}")
    print(f"# {classifier.source}: {len(paths)} image(s)", file=sys.stderr)
    results = classifier.classify(paths, FLAGS.top, FLAGS.batch_size)
    failed = 0
    for result in results:
        if result.error:
            print(f"predict: {result.error}; skipped.", file=sys.stderr)
            failed += 1
            continue
        print(result.path)
        for index, name, probability in zip(
            result.indices, result.names, result.probabilities, strict=True
        ):
            print(f"  {probability:7.2%}  {index:>4}  {name}")
    sys.stdout.flush()
    if FLAGS.output:
        write_output(FLAGS.output, results)
    if failed:
        sys.exit(f"predict: {failed} of {len(paths)} image(s) could not be read.")


def run() -> None:
    """The `imgcls-predict` command."""
    from imgcls_jax.config import show_flags_in_help

    show_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
