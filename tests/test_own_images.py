"""README.md, "Your own images", end to end: a class-folder dataset the
test writes, pretrained weights from a checkpoint the test writes (nothing
downloads here), then the README's three programs: fine-tune, convert to
int8 calibrated on the same folder, benchmark."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "weights"))
from test_sources import pytorchcv_checkpoint  # noqa: E402

CLASSES = ("cat", "dog", "owl")


def write_images(root, per_class, seed):
    """JPEGs of mixed sizes: a class is a colour, plus noise."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        os.makedirs(root / name)
        for k in range(per_class):
            h, w = rng.integers(60, 120, 2)
            pixels = rng.normal(80, 30, (h, w, 3))
            pixels[..., label] += 100
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(
                root / name / f"{k}.jpg"
            )


def run(*args):
    completed = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=400,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout + completed.stderr


@pytest.mark.long
def test_fine_tune_then_int8_then_benchmark_from_the_readme(tmp_path):
    write_images(tmp_path / "my_images" / "train", 4, seed=0)
    write_images(tmp_path / "my_images" / "val", 2, seed=1)
    _, weights = pytorchcv_checkpoint(0.25, 1, tmp_path)
    images = tmp_path / "my_images"
    run_dir = tmp_path / "runs" / "my_images"

    # As the README, with the test's checkpoint for `imagenet` and a small
    # model, input and run.
    output = run(
        "recipes/train.py", "--recipe=finetune", f"--model_dir={run_dir}",
        f"--data.train_path={images / 'train'}",
        f"--data.eval_path={images / 'val'}",
        f"--model.weights={weights}", "--model.scale=0.25",
        "--model.groups=1", "--data.image_size=64", "--strategy=cpu",
        "--train.steps=3", "--train.batch_size=4",
        "--train.eval_batch_size=6",
    )
    assert "starting fresh: predictions (3 classes)" in output
    assert "frozen up to stage4" in output
    assert "top-1 accuracy" in output
    exported = run_dir / "export" / "shufflenet_0.25x_g1.keras"
    assert exported.is_file()

    int8 = tmp_path / "my_images_int8.tflite"
    output = run(
        "tflite/convert.py", f"--model={exported}", f"--output={int8}",
        "--mode=int8", "--logits", "--data.source=folder",
        f"--data.train_path={images / 'train'}",
    )
    assert "Calibrating on 12 centre-cropped train images." in output
    report = json.loads(int8.with_suffix(".tflite.json").read_text())
    # Logits: XNNPACK runs no int8 softmax, which would be a piece alone.
    assert report["xnnpack"]["pieces"] == 1 and report["flex_ops"] == []

    output = run(
        "tflite/benchmark.py", "--models=", f"--tflite={int8}",
        "--num_runs=5", "--warmup=1", f"--output_dir={tmp_path / 'bench'}",
    )
    assert "| my_images_int8 | int8 |" in output
