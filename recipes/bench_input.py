"""Measures input-pipeline throughput in images per second per CPU core.

Writes synthetic ImageNet-sized JPEGs (500x375, quality 90, ~95 KB) into a
class-folder tree or TFRecord shards, then times the library's training and
evaluation pipelines after a warm-up. Reports the median of several timed
repeats, both as images per CPU-second of this process (per-core throughput,
robust to other programs sharing the machine) and as wall-clock images/s.

Example:
    python recipes/bench_input.py --num_images=512 --threads=1
"""

import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from PIL import Image

from keras_shufflenet import data

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 512, "Synthetic JPEGs to write.")
flags.DEFINE_integer("num_classes", 8, "Class folders to spread them over.")
flags.DEFINE_enum("format", "folder", ["folder", "tfrecord"], "Source kind.")
flags.DEFINE_string("data_dir", None, "Where to write; a temp dir if unset.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("image_size", 224, "Output side.")
flags.DEFINE_integer(
    "threads",
    1,
    "tf.data private threadpool size; the "
    "per-core figure is images/s divided by this.",
)
flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
flags.DEFINE_integer("timed_images", 2048, "Images per timed repeat.")
flags.DEFINE_integer("warmup_images", 512, "Images consumed before timing.")
flags.DEFINE_float("color_jitter", 0.0, "Training colour jitter strength.")
flags.DEFINE_list("modes", ["train", "eval"], "Pipelines to time.")
flags.DEFINE_string("output_json", None, "Optional path for the results.")


def synthetic_jpeg(rng, width=500, height=375, quality=90):
    """Encodes a smooth random image with fine texture, ~95 KB at q=90."""
    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels += 40.0 * np.sin(xx / rng.uniform(5, 30))[..., None]
    pixels += 40.0 * np.cos(yy / rng.uniform(5, 30))[..., None]
    pixels += rng.normal(0, 19, size=pixels.shape)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    out = tf.io.encode_jpeg(pixels, quality=quality)
    return out.numpy()


def write_dataset(root, num_images, num_classes, kind):
    """Writes the synthetic JPEGs; returns (path, mean bytes per image)."""
    rng = np.random.default_rng(0)
    images = [synthetic_jpeg(rng) for _ in range(num_images)]
    mean_bytes = float(np.mean([len(b) for b in images]))
    if kind == "folder":
        for i, encoded in enumerate(images):
            folder = os.path.join(root, f"class_{i % num_classes:03d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
                f.write(encoded)
        return root, mean_bytes
    num_shards = 4
    for shard in range(num_shards):
        path = os.path.join(root, f"train-{shard:05d}-of-{num_shards:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard, num_images, num_shards):
                feature = {
                    "image/encoded": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[images[i]])
                    ),
                    "image/class/label": tf.train.Feature(
                        int64_list=tf.train.Int64List(
                            value=[i % num_classes + 1]
                        )
                    ),
                }
                example = tf.train.Example(
                    features=tf.train.Features(feature=feature)
                )
                writer.write(example.SerializeToString())
    return root, mean_bytes


def time_pipeline(pipeline, training):
    """Times repeats; returns (wall images/s, images per CPU-second) lists.

    CPU seconds are this process's user + system time over all threads
    (``time.process_time``), so images per CPU-second is the per-core
    throughput even when other programs share the machine.
    """
    batch = FLAGS.batch_size
    dataset = pipeline.dataset(training, batch)
    if not training:  # One eval pass ends; repeat it to time many batches.
        dataset = dataset.repeat()
    iterator = iter(dataset)
    for _ in range(max(1, FLAGS.warmup_images // batch)):
        next(iterator)
    wall_rates, cpu_rates = [], []
    steps = max(1, FLAGS.timed_images // batch)
    for _ in range(FLAGS.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        real = 0.0
        for _ in range(steps):
            element = next(iterator)
            real += float(element[2].numpy().sum()) if not training else batch
        wall_rates.append(real / (time.perf_counter() - start))
        cpu_rates.append(real / (time.process_time() - cpu_start))
    return wall_rates, cpu_rates


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        root = FLAGS.data_dir or tmp
        path, mean_bytes = write_dataset(
            root, FLAGS.num_images, FLAGS.num_classes, FLAGS.format
        )
        config = data.InputConfig(
            source=FLAGS.format,
            train_path=path,
            eval_path=path,
            num_classes=FLAGS.num_classes,
            image_size=FLAGS.image_size,
            color_jitter=FLAGS.color_jitter,
            threadpool_size=FLAGS.threads,
            shuffle_buffer_size=1024,
        )
        pipeline = data.InputPipeline(config)
        results = {
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads": FLAGS.threads,
            "format": FLAGS.format,
            "num_images": FLAGS.num_images,
            "mean_jpeg_kb": round(mean_bytes / 1000, 1),
            "batch_size": FLAGS.batch_size,
            "image_size": FLAGS.image_size,
        }
        print(
            f"{FLAGS.num_images} JPEGs 500x375, mean "
            f"{results['mean_jpeg_kb']} KB, {FLAGS.format}, "
            f"threads={FLAGS.threads}"
        )
        for mode in FLAGS.modes:
            wall, cpu = time_pipeline(pipeline, training=(mode == "train"))
            wall_median = statistics.median(wall)
            cpu_median = statistics.median(cpu)
            results[mode] = {
                "images_per_cpu_second_median": round(cpu_median, 1),
                "images_per_s_median": round(wall_median, 1),
                "images_per_s_per_thread": round(
                    wall_median / FLAGS.threads, 1
                ),
                "images_per_cpu_second_repeats": [round(r, 1) for r in cpu],
                "images_per_s_repeats": [round(r, 1) for r in wall],
            }
            print(
                f"{mode:5s}: {cpu_median:6.1f} img per CPU-second (median; "
                f"repeats {', '.join(f'{r:.0f}' for r in cpu)}) | wall "
                f"{wall_median:6.1f} img/s = "
                f"{wall_median / FLAGS.threads:6.1f} img/s/thread"
            )
        print(f"bad images: {pipeline.bad_image_count}")
        if FLAGS.output_json:
            with open(FLAGS.output_json, "w") as f:
                json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
