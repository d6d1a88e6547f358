"""Measures input-pipeline throughput in images per second per CPU core.

Writes synthetic ImageNet-sized JPEGs (500x375, quality 90, ~95 KB) into a
class-folder tree and TFRecord shards, then times the library's training
and evaluation pipelines of each source after a warm-up. The sources'
repeats are interleaved so that both see the same machine, and each repeat
runs on a fresh iterator so that no other pipeline's threads run while one
is timed. Reports the median of the timed repeats, both as images per
CPU-second of this process (per-core throughput, robust to other programs
sharing the machine) and as wall-clock images/s.

Example:
    python recipes/bench_input.py --num_images=512 --threads=1
"""

import gc
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
flags.DEFINE_list(
    "formats", ["folder", "tfrecord"], "Sources to time: folder, tfrecord."
)
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
    os.makedirs(root, exist_ok=True)
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


def timed_batches(pipeline, training):
    """An iterator of `(images counted, ...)` batches, warmed up."""
    batch = FLAGS.batch_size
    dataset = pipeline.dataset(training, batch)
    if not training:  # One eval pass ends; repeat it to time many batches.
        dataset = dataset.repeat()
    iterator = iter(dataset)
    for _ in range(max(1, FLAGS.warmup_images // batch)):
        next(iterator)
    return iterator


def time_repeat(iterator, training):
    """Times one repeat; returns (wall images/s, images per CPU-second).

    CPU seconds are this process's user + system time over all threads
    (``time.process_time``), so images per CPU-second is the per-core
    throughput even when other programs share the machine.
    """
    batch = FLAGS.batch_size
    start, cpu_start = time.perf_counter(), time.process_time()
    real = 0.0
    for _ in range(max(1, FLAGS.timed_images // batch)):
        element = next(iterator)
        real += float(element[2].numpy().sum()) if not training else batch
    wall = real / (time.perf_counter() - start)
    return wall, real / (time.process_time() - cpu_start)


def build_pipelines(root):
    """One pipeline per format over the same synthetic JPEGs."""
    pipelines, mean_bytes = {}, 0.0
    for kind in FLAGS.formats:
        if kind not in ("folder", "tfrecord"):
            raise ValueError(
                f"--formats takes folder and tfrecord. Received: {kind!r}"
            )
        path, mean_bytes = write_dataset(
            os.path.join(root, kind), FLAGS.num_images, FLAGS.num_classes,
            kind,
        )
        config = data.InputConfig(
            source=kind,
            train_path=path,
            eval_path=path,
            num_classes=FLAGS.num_classes,
            image_size=FLAGS.image_size,
            color_jitter=FLAGS.color_jitter,
            threadpool_size=FLAGS.threads,
            shuffle_buffer_size=1024,
        )
        pipelines[kind] = data.InputPipeline(config)
    return pipelines, mean_bytes


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        pipelines, mean_bytes = build_pipelines(FLAGS.data_dir or tmp)
        results = {
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads": FLAGS.threads,
            "num_images": FLAGS.num_images,
            "mean_jpeg_kb": round(mean_bytes / 1000, 1),
            "batch_size": FLAGS.batch_size,
            "image_size": FLAGS.image_size,
        }
        print(
            f"{FLAGS.num_images} JPEGs 500x375, mean "
            f"{results['mean_jpeg_kb']} KB, threads={FLAGS.threads}; "
            f"{FLAGS.repeats} interleaved repeats of {FLAGS.timed_images}"
        )
        for mode in FLAGS.modes:
            training = mode == "train"
            rates = {kind: [] for kind in pipelines}
            for _ in range(FLAGS.repeats):
                for kind, pipeline in pipelines.items():
                    # One live iterator at a time: another's prefetching
                    # threads would run, and be counted, during this timing.
                    iterator = timed_batches(pipeline, training)
                    rates[kind].append(time_repeat(iterator, training))
                    del iterator
                    gc.collect()
            for kind, pairs in rates.items():
                wall = [w for w, _ in pairs]
                cpu = [c for _, c in pairs]
                results[f"{kind}_{mode}"] = report(kind, mode, wall, cpu)
        for kind, pipeline in pipelines.items():
            print(f"bad images ({kind}): {pipeline.bad_image_count}")
        if FLAGS.output_json:
            with open(FLAGS.output_json, "w") as f:
                json.dump(results, f, indent=2)


def report(kind, mode, wall, cpu):
    """Prints one row; returns its numbers."""
    wall_median = statistics.median(wall)
    cpu_median = statistics.median(cpu)
    print(
        f"{kind:8s} {mode:5s}: {cpu_median:6.1f} img per CPU-second "
        f"(median; repeats {', '.join(f'{r:.0f}' for r in cpu)}) | wall "
        f"{wall_median:6.1f} img/s = "
        f"{wall_median / FLAGS.threads:6.1f} img/s/thread"
    )
    return {
        "images_per_cpu_second_median": round(cpu_median, 1),
        "images_per_s_median": round(wall_median, 1),
        "images_per_s_per_thread": round(wall_median / FLAGS.threads, 1),
        "images_per_cpu_second_repeats": [round(r, 1) for r in cpu],
        "images_per_s_repeats": [round(r, 1) for r in wall],
    }


if __name__ == "__main__":
    app.run(main)
