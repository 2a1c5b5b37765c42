"""Adds array_record files to a TFDS dataset prepared as TFRecords, so that it can be streamed.

Streaming (`dataset.streaming=True`) reads records at random through `tfds.data_source`, which
needs array_record files; `tfds build` writes TFRecords unless told otherwise. This copies each
TFRecord shard's records, unchanged, into an array_record shard beside it and records the
format in the dataset's `dataset_info.json` as an alternative, as TFDS's own
`tfds convert_format` does in place (which needs Apache Beam installed). TFDS then reads either
format: `as_dataset` the TFRecords, `data_source` the array_records. Run it once per dataset:

    python -m imgcls_jax.data.tfds_array_record --name=imagenet2012 --data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import os

from absl import app, flags, logging

ARRAY_RECORD = "array_record"


def add_array_record(name: str, data_dir: str) -> list[str]:
    """Writes the array_record shards of prepared TFDS dataset `name` in `data_dir` beside its
    shards; returns their paths ([] when the dataset already has them)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}.")
    info = builder.info
    target = file_adapters.FileFormat.ARRAY_RECORD
    if target in info.available_file_formats():
        return []
    reader = file_adapters.ADAPTER_FOR_FORMAT[info.file_format]
    writer = file_adapters.ADAPTER_FOR_FORMAT[target]
    written = []
    for split in info.splits.values():
        template = split.filename_template.replace(filetype_suffix=target.file_suffix)
        for shard, path in enumerate(split.filepaths):
            out = template.sharded_filepath(shard_index=shard, num_shards=split.num_shards)
            records = ((i, record.numpy()) for i, record in enumerate(reader.make_tf_data(path)))
            partial = out.parent / f"{out.name}.incomplete"  # Renamed once complete.
            writer.write_examples(partial, records)
            partial.rename(out)
            written.append(os.fspath(out))
            logging.info("Wrote %s.", out)
    info.add_alternative_file_format(target)
    info.write_to_directory(builder.data_dir, all_metadata=False)
    return written


FLAGS = flags.FLAGS
flags.DEFINE_string("name", None, "TFDS dataset, as config.dataset.name names it.")
flags.DEFINE_string("data_dir", "", "Its TFDS data_dir (config.dataset.data_dir); '': TFDS's.")


def main(argv) -> None:
    del argv
    written = add_array_record(FLAGS.name, FLAGS.data_dir)
    print(f"Wrote {len(written)} array_record shards." if written else
          f"TFDS {FLAGS.name} already has array_record files.")  # fmt: skip


if __name__ == "__main__":
    flags.mark_flag_as_required("name")
    app.run(main)
