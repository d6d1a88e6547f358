"""Tests of the training library and the train/evaluate programs.

Every run uses ShuffleNet 0.25x shallow on 32x32 digits for a few steps.
"""

import glob
import json
import os
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_shufflenet import data
from keras_shufflenet import training
from keras_shufflenet.data import config as data_config
from keras_shufflenet.models import naming
from keras_shufflenet.training import config as training_config
from keras_shufflenet.training import determinism
from keras_shufflenet.training import distribution
from keras_shufflenet.training import evaluation
from keras_shufflenet.training import faults
from keras_shufflenet.training import flags
from keras_shufflenet.training import fused
from keras_shufflenet.training import optimization

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
DIGITS_TRAIN, DIGITS_EVAL = 1437, 360


def tiny_config(model_dir, **overrides):
    """A few steps of 0.25x shallow on digits. The fast training graph is
    off (its trace costs about 9 s a run); `cpu_run` and test_fused.py
    cover it."""
    config = training.ExperimentConfig(
        model_dir=str(model_dir),
        strategy="cpu",
        export=False,
        model=training.ModelConfig(
            scale=0.25, groups=3, shallow=True, fused_training=False
        ),
        optimizer=training.OptimizerConfig(lr=0.5, warmup_epochs=0.0),
        train=training.TrainConfig(
            batch_size=16,
            steps=6,
            eval_batch_size=120,
            bn_recalibration_epochs=0.0,
            steps_per_execution=3,
            checkpoint_every_steps=3,
            log_every_steps=3,
        ),
        data=data.InputConfig(source="digits", image_size=32),
    )
    return flags.apply_overrides(config, overrides)


def tiny_flags(model_dir):
    return [
        f"--model_dir={model_dir}",
        "--strategy=cpu",
        "--export=false",
        "--model.scale=0.25",
        "--model.shallow=true",
        "--model.fused_training=false",
        "--data.image_size=32",
        "--train.batch_size=16",
        "--train.eval_batch_size=120",
        "--train.bn_recalibration_epochs=0",
        "--optimizer.warmup_epochs=0",
    ]


def run_program(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kwargs,
    )


# ---------------------------------------------------------------------------
# Schedule, weight decay, config.
# ---------------------------------------------------------------------------


def test_linear_decay_learning_rate_at_first_middle_and_last_step():
    peak = optimization.scaled_learning_rate(0.5, 256, 1024)
    assert peak == pytest.approx(0.125)
    schedule = optimization.LinearDecay(peak, total_steps=1000)
    assert float(schedule(0)) == pytest.approx(0.125)
    assert float(schedule(500)) == pytest.approx(0.0625)
    assert float(schedule(999)) == pytest.approx(0.125 / 1000)
    assert float(schedule(1000)) == 0.0
    assert float(schedule(5000)) == 0.0
    warm = optimization.LinearDecay(1.0, total_steps=110, warmup_steps=10)
    assert float(warm(0)) == pytest.approx(0.1)
    assert float(warm(4)) == pytest.approx(0.5)
    assert float(warm(9)) == pytest.approx(1.0)
    assert float(warm(10)) == pytest.approx(1.0)
    assert float(warm(60)) == pytest.approx(0.5)
    assert float(warm(109)) == pytest.approx(0.01)


def test_weight_decay_gradient_is_decay_times_kernel_and_zero_elsewhere():
    model = distribution.build_model(
        training.ModelConfig(scale=0.25, groups=3, shallow=True, se=True),
        num_classes=10,
        image_size=32,
    )
    decayed = {id(v) for v in optimization.weight_decay_variables(model)}
    kernels = [
        w
        for layer in model._flatten_layers(include_self=False)
        for name in ("kernel", "depthwise_kernel")
        for w in [getattr(layer, name, None)]
        if isinstance(w, keras.Variable)
    ]
    # Every convolution and dense kernel, and nothing else.
    assert decayed == {id(v) for v in kernels}
    assert len(kernels) > 20
    wd = 4e-5
    with tf.GradientTape() as tape:
        loss = optimization.weight_decay_loss(model, wd)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    others = 0
    for variable, grad in zip(variables, grads):
        if id(variable) in decayed:
            np.testing.assert_allclose(
                grad, wd * variable.numpy(), rtol=1e-5, atol=1e-12
            )
        else:  # BN gamma/beta and the SE convolutions' biases.
            assert grad is None or not np.any(grad), variable.path
            others += 1
    assert others > 20
    expected = 0.5 * wd * sum(float(np.sum(np.square(v))) for v in kernels)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_overrides_parse_field_types_and_reject_bad_names_and_values():
    config = flags.apply_overrides(
        training.ExperimentConfig(model_dir="x"),
        {
            "optimizer.lr": "0.1",
            "model.se": "true",
            "model.groups": "8",
            "train.steps": "none",
            "train.eval_batch_size": "50",
            "data.aspect_ratio_range": "0.5,2",
            "strategy": "tpu",
        },
    )
    assert config.optimizer.lr == 0.1
    assert config.model.se is True and config.model.groups == 8
    assert config.train.steps is None and config.train.eval_batch_size == 50
    assert config.data.aspect_ratio_range == (0.5, 2.0)
    assert config.strategy == "tpu"
    roundtrip = training_config.config_from_dict(training_config.config_to_dict(config))
    assert roundtrip == config
    with pytest.raises(ValueError, match=r"Did you mean \['optimizer.lr'\]"):
        flags.apply_overrides(config, {"lr": "0.1"})
    with pytest.raises(ValueError, match="`train.batch_size` expects a"):
        flags.apply_overrides(config, {"train.batch_size": "big"})
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        training_config.resolve_config(
            flags.apply_overrides(config, {"strategy": "gpu"})
        )


def test_every_paper_recipe_loads_and_matches_its_header():
    paths = sorted(glob.glob(os.path.join(ROOT, "recipes/configs/shuff*.py")))
    # Table 2 (15), Table 3 without shuffle (6), Table 5's others (4).
    assert len(paths) == 25
    pattern = re.compile(
        r"# ShuffleNet ([\d.]+)x \(g=(\d)\)( no shuffle| with SE| shallow)?"
        r", ImageNet\. Paper Table (\d): ([\d.]+)% top-1 error\."
    )
    for path in paths:
        with open(path) as f:
            header = f.readline()
        match = pattern.fullmatch(header.strip())
        assert match, (path, header)
        config = training_config.resolve_config(
            flags.apply_overrides(
                flags.load_recipe(path), {"model_dir": "x"}
            )
        )
        assert config.model.scale == float(match[1])
        assert config.model.groups == int(match[2])
        assert config.model.shuffle == (match[3] != " no shuffle")
        assert config.model.se == (match[3] == " with SE")
        assert config.model.shallow == (match[3] == " shallow")
        assert config.paper_top1_error == float(match[5])
        assert (config.optimizer.lr, config.train.batch_size) == (0.5, 1024)
        assert config.optimizer.weight_decay == 4e-5
        assert config.data.name == "imagenet2012"
        # The recipe's file is named by the one naming function.
        name = naming.variant_name(
            config.model.scale, config.model.groups,
            shallow=config.model.shallow, se=config.model.se,
            shuffle=config.model.shuffle,
        )
        assert os.path.basename(path) == f"{name}.py"


def test_bn_recalibration_sets_statistics_to_average_of_batches():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9)]
    )
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(loc=i, scale=i + 1, size=(8, 3)).astype("float32")
        for i in range(5)
    ]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.stack(batches), np.zeros((5, 8)))
    )
    strategy = tf.distribute.get_strategy()
    recalibration = evaluation.BatchNormRecalibration(model, strategy)
    recalibration.run(iter(dataset), 5, steps_per_execution=2)
    bn = model.layers[0]
    np.testing.assert_allclose(
        bn.moving_mean.numpy(),
        np.mean([b.mean(axis=0) for b in batches], axis=0),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(),
        np.mean([b.var(axis=0) for b in batches], axis=0),
        rtol=1e-5,
    )
    assert bn.momentum == 0.9


@pytest.fixture
def mirrored(mirrored_strategy):
    # The process-wide strategy of conftest.py, the one that
    # create_strategy("mirrored") builds over the two logical CPUs.
    return mirrored_strategy


def test_loss_scaled_step_is_skipped_when_any_replica_overflows(mirrored):
    strategy = mirrored
    with strategy.scope():
        weight = keras.Variable(np.ones(3, "float32"))
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=8.0
        )
        optimizer.build([weight])

    @tf.function
    def step(overflow):
        def replica_fn():
            context = tf.distribute.get_replica_context()
            # Replica 0's gradient is finite; replica 1's may overflow.
            bad = tf.logical_and(
                context.replica_id_in_sync_group == 1, overflow
            )
            grad = tf.where(bad, np.inf, 8.0) * tf.ones(3)
            optimization.apply_gradients(optimizer, [grad], [weight])

        strategy.run(replica_fn)

    step(tf.constant(True))
    np.testing.assert_array_equal(weight.numpy(), np.ones(3))
    assert int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.dynamic_scale.numpy()) == 4.0
    step(tf.constant(False))
    # Mean unscaled gradient 8 / 4 = 2 on both replicas, summed: 4.
    np.testing.assert_allclose(weight.numpy(), np.full(3, 1.0 - 0.1 * 4.0))
    assert int(optimizer.iterations.numpy()) == 1


def test_sync_batch_norm_flag_synchronizes_every_bn_layer():
    config = training.ModelConfig(scale=0.25, shallow=True)
    plain = distribution.build_model(config, 10, 32)
    synced = distribution.build_model(
        training.ModelConfig(scale=0.25, shallow=True, sync_batch_norm=True),
        10,
        32,
    )
    layers = distribution.batch_norm_layers(synced)
    assert len(layers) == len(distribution.batch_norm_layers(plain)) > 20
    assert all(layer.synchronized for layer in layers)
    assert synced.count_params() == plain.count_params()


# ---------------------------------------------------------------------------
# Training runs.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("cpu_run")
    config = tiny_config(
        model_dir,
        export=True,
        **{
            "train.bn_recalibration_epochs": 0.04,
            "model.fused_training": True,
        },
    )
    trainer = training.Trainer(config, verbose=False)
    return trainer, trainer.fit()


@pytest.mark.xdist_group("cpu_run")
def test_cpu_run_trains_to_final_step_and_counts_every_eval_example(cpu_run):
    trainer, result = cpu_run
    assert result.step == 6 == trainer.step
    assert trainer.recalibration_steps == round(0.04 * (DIGITS_TRAIN // 16))
    assert int(trainer.recalibrated_at.numpy()) == 6
    # Two evaluations: at step 6 and after the BN re-estimation.
    assert [h["step"] for h in result.history] == [6, 6]
    for entry in result.history:
        assert entry["eval"]["examples"] == DIGITS_EVAL
        assert entry["eval"]["bad_images"] == 0
        assert 0.0 <= entry["eval"]["top1"] <= entry["eval"]["top5"] <= 1.0
    steps = sorted(
        int(p.split("-")[-1].split(".")[0])
        for p in glob.glob(f"{trainer.checkpoint_dir}/ckpt-*.index")
    )
    assert steps == [3, 6]


@pytest.mark.xdist_group("cpu_run")
def test_exported_model_reproduces_the_trained_model(cpu_run):
    trainer, result = cpu_run
    (_, _), (images, _) = data.load_digits_arrays(32)
    images = images[:16].astype("float32")
    logits = trainer.model(images, training=False)
    expected = keras.ops.softmax(logits).numpy()
    loaded = keras.saving.load_model(result.keras_path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), expected, atol=1e-5
    )
    saved_model = tf.saved_model.load(result.saved_model_path)
    np.testing.assert_allclose(saved_model.serve(images), expected, atol=1e-5)
    with Image.open(result.curves_path) as png:
        assert png.size == (1400, 400)


@pytest.mark.long
def test_mirrored_float16_loss_scaling_skips_overflows_on_all_replicas(
    tmp_path, mirrored
):
    strategy = mirrored
    config = tiny_config(
        tmp_path, strategy="mirrored", precision="mixed_float16"
    )
    trainer = training.Trainer(config, strategy, verbose=False)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    # No NonFiniteLossError: no replica applied an overflowed step.
    result = trainer.fit()
    assert result.step == 6
    # Steps did overflow at the initial scale 2**15 and were skipped.
    assert float(trainer.optimizer.dynamic_scale.numpy()) < 2.0**15
    assert result.metrics["examples"] == DIGITS_EVAL
    assert np.isfinite(result.metrics["loss"])
    for weight in trainer.model.weights:
        copies = [v.numpy() for v in weight.value.values]
        assert len(copies) == 2
        # BN statistics included: the trainer averages the replicas' own.
        np.testing.assert_array_equal(copies[0], copies[1], weight.path)


@pytest.mark.xdist_group("cpu_run")
def test_trainer_steps_the_fused_training_graph_of_its_model(cpu_run):
    trainer, _ = cpu_run
    graph = trainer.train_model
    assert graph is not trainer.model
    assert any(isinstance(layer, fused.FusedShuffleUnit) for layer in graph.layers)
    assert {id(v) for v in graph.weights} == {
        id(v) for v in trainer.model.weights
    }


def test_fused_training_false_steps_the_model_itself(tmp_path):
    trainer = training.Trainer(tiny_config(tmp_path), verbose=False)
    assert trainer.config.model.fused_training is False
    assert trainer.train_model is trainer.model


def test_nan_loss_stops_the_run_with_a_clear_message(tmp_path):
    trainer = training.Trainer(tiny_config(tmp_path), verbose=False)
    kernel = trainer.model.get_layer("predictions").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    with pytest.raises(
        optimization.NonFiniteLossError,
        match=r"training loss became nan between steps 0 and 3 .*"
        r"Lower `optimizer.lr`",
    ):
        trainer.fit()
    assert tf.train.latest_checkpoint(trainer.checkpoint_dir) is None


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.long
def test_multi_worker_two_processes_end_with_identical_weights(tmp_path):
    config = tiny_config(
        tmp_path / "run",
        strategy="multi_worker",
        **{"train.bn_recalibration_epochs": 0.04},
    )
    config_json = tmp_path / "config.json"
    config_json.write_text(json.dumps(training_config.config_to_dict(config)))
    workers = [f"localhost:{_free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        }
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(tf_config),
            TF_CPP_MIN_LOG_LEVEL="3",
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(ROOT, "tests/training/training_worker.py"),
                    str(config_json),
                    str(tmp_path / f"worker{index}.npz"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    chief, other = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert int(chief["step"]) == int(other["step"]) == 6
    names = [n for n in chief.files if n not in ("step", "top1")]
    assert names == [n for n in other.files if n not in ("step", "top1")]
    assert len(names) > 50
    for name in names:
        np.testing.assert_array_equal(chief[name], other[name], name)
    # Both workers evaluated the whole split together.
    assert float(chief["top1"]) == float(other["top1"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["derived"]["num_replicas"] == 2


def test_deterministic_training_is_refused_where_onednn_runs(
    tmp_path, monkeypatch
):
    """oneDNN's gradient sums depend on the thread that runs them, which
    TensorFlow's op determinism does not cover: `Trainer` says so and how
    to turn oneDNN off, before it builds anything or turns determinism
    on."""
    monkeypatch.setattr(training.determinism, "cpu_runs_onednn", lambda: True)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    enabled = []
    monkeypatch.setattr(
        tf.config.experimental, "enable_op_determinism",
        lambda: enabled.append(True),
    )
    config = tiny_config(tmp_path, **{"train.deterministic": True})
    with pytest.raises(ValueError) as raised:
        training.Trainer(config, verbose=False)
    message = str(raised.value)
    assert "train.deterministic=True" in message
    assert "(TF_ENABLE_ONEDNN_OPTS=1)" in message
    assert "Set TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow is imported" in message
    assert not enabled


@pytest.mark.parametrize(
    "deterministic, setting, backend, reruns",
    [(True, None, "tensorflow", True), (True, "1", "tensorflow", False),
     (True, "0", "tensorflow", False), (False, None, "tensorflow", False),
     (True, None, "jax", False)],
)
def test_deterministic_program_runs_again_with_onednn_off(
    monkeypatch, deterministic, setting, backend, reruns
):
    """recipes/train.py learns `train.deterministic` after TensorFlow is
    imported, so it runs itself again, same process and arguments, with
    TF_ENABLE_ONEDNN_OPTS=0; a setting of the user's is kept, and on JAX,
    where XLA computes the model, it does not run again."""
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    if setting is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", setting)
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise SystemExit  # What replacing the process amounts to here.

    monkeypatch.setattr(os, "execve", execve)
    config = training.ExperimentConfig(
        train=training.TrainConfig(deterministic=deterministic)
    )
    if reruns:
        with pytest.raises(SystemExit):
            determinism.rerun_without_onednn(config)
        [(path, args, env)] = calls
        assert (path, args) == (sys.executable, [sys.executable, *sys.argv])
        assert env["TF_ENABLE_ONEDNN_OPTS"] == "0"
        assert env["PATH"] == os.environ["PATH"]
    else:
        determinism.rerun_without_onednn(config)
        assert not calls


def test_train_program_reads_deterministic_from_flag_files_before_tensorflow(
    tmp_path, monkeypatch
):
    """recipes/train.py reads `--train.deterministic` as absl does (here
    from a flag file, the last setting winning) before TensorFlow is
    imported, and starts it with oneDNN off: TensorFlow's import then does
    not log that oneDNN is on. The bad value after it stops the program
    as before."""
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(
        "--train.deterministic=false\n--train.deterministic=True\n"
    )
    completed = subprocess.run(
        [sys.executable, "recipes/train.py", f"--flagfile={flagfile}",
         "--train.steps=bad"],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"),
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 1
    assert "`train.steps` expects an optional int value" in completed.stderr
    assert (
        "train.deterministic=true: starting TensorFlow with "
        "TF_ENABLE_ONEDNN_OPTS=0" in completed.stderr
    )
    assert "oneDNN custom operations are on" not in completed.stderr


@pytest.mark.long
def test_sigterm_then_kill_9_then_restart_ends_with_identical_weights(
    tmp_path, monkeypatch
):
    """The fast fault-injection run: SIGTERM writes a checkpoint and exits
    with 75, kill -9 loses only the steps since the last checkpoint, and
    with --train.deterministic=true the end state equals an uninterrupted
    run's, bit for bit (tools/fault_injection.py runs the long plan). The
    program starts TensorFlow with oneDNN off, as it does for a user who
    leaves TF_ENABLE_ONEDNN_OPTS unset; where oneDNN would be on, the
    Trainer refuses to run otherwise."""
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    command = [
        sys.executable,
        os.path.join(ROOT, "recipes/train.py"),
        *tiny_flags("unused")[1:],
        "--train.steps=40",
        "--train.checkpoint_every_steps=5",
        "--train.steps_per_execution=5",
        "--train.log_every_steps=5",
        "--train.deterministic=true",
        "--optimizer.lr=0.4",
    ]
    model_dir = tmp_path / "run"
    report = faults.run_with_faults(
        command,
        str(model_dir),
        ["sigterm", "kill_during_step"],
        reference_dir=str(tmp_path / "reference"),
        timeout=240,
        say=lambda line: None,
    )
    assert report.completed, report.outputs[-1][-3000:]
    assert report.runs == 3
    for output in report.outputs:
        assert "starting TensorFlow with TF_ENABLE_ONEDNN_OPTS=0" in output
        assert "running again" not in output  # TensorFlow imported once.
    assert "exit 75" in report.faults[0] and "exit -9" in report.faults[1]
    assert report.identical, report.mismatched
    stopped = int(re.search(r"ckpt-(\d+); the same", report.outputs[0])[1])
    assert f"at step {stopped} of 40" in report.outputs[1]
    resumed = report.outputs[2]
    start = int(re.search(r"at step (\d+) of 40", resumed)[1])
    assert stopped < start < 40
    # 89 batches of 16 per digits epoch: the stream reads on mid-epoch.
    assert f"from example {start * 16} of epoch 0." in resumed
    peak = 0.4 * 16 / 1024
    lr = float(re.search(r"learning rate ([\d.e-]+);", resumed)[1])
    assert lr == pytest.approx(peak * (40 - start) / 40, rel=1e-4)
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["config"]["optimizer"]["lr"] == 0.4
    assert saved["derived"]["total_steps"] == 40
    # The TensorBoard learning rate continues the one schedule.
    logged = {}
    for path in glob.glob(str(model_dir / "tensorboard" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "train/learning_rate":
                    logged[event.step] = float(tf.make_ndarray(value.tensor))
    assert set(range(start + 5, 41, 5)) <= set(logged)
    for step, value in logged.items():
        assert value == pytest.approx(peak * (41 - step) / 40, rel=1e-4)


@pytest.mark.xdist_group("cpu_run")
def test_evaluate_program_reports_top1_of_a_folder_dataset(cpu_run, tmp_path):
    _, result = cpu_run
    (_, _), (images, labels) = data.load_digits_arrays(32)
    # Four images of each digit; folders "0".."9" sort as the labels do.
    keep = np.concatenate([np.flatnonzero(labels == d)[:4] for d in range(10)])
    images, labels = images[keep], labels[keep]
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "val" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    (tmp_path / "val" / "3" / "broken.png").write_bytes(b"not a png")
    model = keras.saving.load_model(result.keras_path)
    probabilities = model.predict(images.astype("float32"), verbose=0)
    expected = np.mean(np.argmax(probabilities, axis=1) == labels)
    out = tmp_path / "metrics.json"
    completed = run_program(
        [
            "recipes/evaluate.py",
            f"--model_path={result.keras_path}",
            "--strategy=cpu",
            "--data.source=folder",
            "--data.image_size=32",
            f"--data.eval_path={tmp_path / 'val'}",
            "--data.crop_fraction=1.0",
            "--train.eval_batch_size=16",
            # One broken file in 41 is 2.4%.
            "--data.max_bad_fraction=0.05",
            f"--output_json={out}",
        ]
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["examples"] == 40
    assert metrics["bad_images"] == 1
    assert metrics["top1"] == pytest.approx(expected)
    assert metrics["top1"] <= metrics["top5"]
    assert f"top-1 accuracy {expected:.2%}" in completed.stdout


@pytest.mark.xdist_group("cpu_run")
def test_evaluation_of_a_split_with_too_many_bad_images_stops(
    cpu_run, tmp_path
):
    _, result = cpu_run
    (_, _), (images, labels) = data.load_digits_arrays(32)
    for d in range(10):
        folder = tmp_path / "val" / str(d)
        folder.mkdir(parents=True)
        Image.fromarray(images[np.flatnonzero(labels == d)[0]]).save(
            folder / "good.png"
        )
    (tmp_path / "val" / "3" / "broken.png").write_bytes(b"not a png")
    config = flags.apply_overrides(
        tiny_config(tmp_path / "unused"),
        {
            "data.source": "folder",
            "data.eval_path": str(tmp_path / "val"),
            "data.crop_fraction": 1.0,
        },
    )
    # One broken file in 11 is 9%, over the default 1%.
    with pytest.raises(
        data.BadDataError, match=r"1 of 11 .*data.max_bad_fraction=0.01.*"
        r"broken.png"
    ):
        training.evaluate_model(result.keras_path, config)


def test_data_model_scale_follows_the_model_and_a_conflict_is_refused(
    tmp_path,
):
    config = training_config.resolve_config(tiny_config(tmp_path))
    assert config.data.model_scale == 0.25
    assert config.data.area_range == (
        data_config.default_min_crop_area(0.25), 1.0
    )
    with pytest.raises(
        ValueError, match=r"data.model_scale=0.5, model.scale=0.25"
    ):
        training_config.resolve_config(
            tiny_config(tmp_path, **{"data.model_scale": 0.5})
        )
