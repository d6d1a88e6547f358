"""Tests of the latency benchmark: statistics, interleaving, thread
setting, caching, output formats and a tiny end-to-end run."""

import csv
import io
import json
import os
from importlib import metadata

import keras
import pytest
import tensorflow as tf

import keras_shufflenet as ks
from keras_shufflenet.lite import benchmark
from keras_shufflenet.lite import rewrite as deploy
from keras_shufflenet.lite import standard as lite_standard
from keras_shufflenet.lite.benchmark import latency
from keras_shufflenet.lite.benchmark import profiling
from keras_shufflenet.lite.benchmark import reporting
from keras_shufflenet.lite.benchmark import specs as lite_specs
from keras_shufflenet.lite.benchmark import timing

RESOLUTION = "160x160"








class FakeRunner:
    def __init__(self, name, calls, seconds):
        self.name, self.calls, self.seconds = name, calls, seconds

    def invoke(self):
        self.calls.append(self.name)
        return self.seconds, self.seconds / 2


def test_measure_warms_up_then_times_in_interleaved_order():
    calls = []
    runners = {n: FakeRunner(n, calls, s) for n, s in [("x", 0.01),
                                                        ("y", 0.02)]}
    times = timing.measure(runners, num_runs=3, warmup=2)
    assert calls == ["x", "y", "y", "x"] + ["x", "y", "y", "x", "x", "y"]
    assert times["x"]["wall"] == [0.01] * 3
    assert times["y"]["cpu"] == [0.01] * 3
    assert times["y"]["wall_s"] == pytest.approx(0.06)


def test_block_rows_take_differences_of_truncated_models():
    blocks = [("stem", "conv1_relu"), ("unit", "u_relu"), ("head", "out")]
    rows = profiling.block_rows(
        blocks,
        {"stem": 1.0, "unit": 3.0, "head": 4.0},
        {"stem": 10_000_000, "unit": 50_000_000, "head": 51_000_000},
    )
    assert [r["block_ms"] for r in rows] == [1.0, 2.0, 1.0]
    assert [r["share"] for r in rows] == [0.25, 0.5, 0.25]
    assert [r["mflops"] for r in rows] == [10.0, 40.0, 1.0]
    assert rows[1]["gflops_per_s"] == pytest.approx(40.0)


def test_shufflenet_blocks_are_stem_pool_units_and_head():
    model = ks.ShuffleNet(0.25, 3, input_shape=(32, 32, 3), classes=10)
    blocks = profiling.shufflenet_blocks(model)
    assert [b for b, _ in blocks][:4] == [
        "stem", "pool1", "stage2_unit1", "stage2_unit2"
    ]
    assert len(blocks) == 2 + 16 + 1
    assert dict(blocks)["stage3_unit1"] == "stage3_unit1_concat"
    assert dict(blocks)["stage4_unit4"] == "stage4_unit4_relu"
    assert blocks[-1] == ("head", model.layers[-1].name)


def test_cache_key_depends_on_what_changes_the_model():
    spec = lite_specs.SHUFFLENETS["shufflenet_1.0x_g3"]
    key = latency.cache_key(spec, (224, 224), "float32", 8)
    assert key == latency.cache_key(spec, (224, 224), "float32", 8)
    others = {
        latency.cache_key(spec, (480, 640), "float32", 8),
        latency.cache_key(spec, (224, 224), "int8", 8),
        latency.cache_key(spec, (224, 224), "int8", 16),
        latency.cache_key(
            lite_specs.with_deployment(spec, "[s]", rewrites=()),
            (224, 224), "float32", 8,
        ),
        latency.cache_key(
            lite_specs.shufflenet_spec(1.0, 8), (224, 224), "float32", 8
        ),
    }
    assert key not in others and len(others) == 5


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        lite_specs.parse_resolution("224")
    with pytest.raises(ValueError, match="Unknown model 'resnet50'"):
        benchmark.model_specs(["resnet50"])
    with pytest.raises(ValueError, match="groups"):
        benchmark.model_specs(["shufflenet_1.0x_g5"])


def test_any_shufflenet_is_named_by_scale_and_groups():
    g1, table8 = benchmark.model_specs(
        ["shufflenet_1.0x_g1", "shufflenet_2.0x_g3"]
    )
    assert g1.name == "shufflenet_1.0x_g1" and g1.family == "shufflenet"
    assert dict(g1.kwargs) == {"scale": 1.0, "groups": 1}
    assert table8 is lite_specs.SHUFFLENETS["shufflenet_2.0x_g3"]
    model = g1.build((64, 64, 3), logits=True)
    assert model.get_layer("stage2_unit2_gconv1").groups == 1


def test_without_and_with_rewrite_change_exactly_one_rewrite():
    spec = lite_specs.shufflenet_spec(1.0, 3)
    without = lite_specs.without_rewrite(spec, "preprocessing")
    assert without.name == "shufflenet_1.0x_g3[-preprocessing]"
    assert dict(without.deployment)["rewrites"] == (
        "average_pool", "pool_padding", "shuffle_after_stride"
    )
    added = lite_specs.with_rewrite(spec, "groupwise_units")
    assert added.name == "shufflenet_1.0x_g3[+groupwise_units]"
    assert dict(added.deployment)["rewrites"] == (
        deploy.DEFAULT_REWRITES + ("groupwise_units",)
    )
    with pytest.raises(ValueError, match="'fold_all' is not one of"):
        lite_specs.without_rewrite(spec, "fold_all")
    with pytest.raises(ValueError, match="'preprocessing' is not one of"):
        lite_specs.with_rewrite(spec, "preprocessing")


def test_each_route_converts_with_its_own_function(tmp_path, monkeypatch):
    calls = []

    def convert(model, path, **kwargs):
        calls.append(("keras_shufflenet", kwargs["mode"]))

    def standard(route):
        def convert(model, path, mode, calibration_data):
            assert (calibration_data is None) == (mode == "float32")
            calls.append((route, mode))
        return convert

    monkeypatch.setattr(latency, "convert", convert)
    monkeypatch.setattr(
        latency,
        "STANDARD_ROUTES",
        {route: standard(route) for route in lite_specs.ROUTE_SUFFIXES},
    )
    spec = lite_specs.shufflenet_spec(0.5, 3)
    specs = [spec] + [
        lite_specs.with_route(spec, route) for route in lite_specs.ROUTE_SUFFIXES
    ]
    assert [s.name for s in specs[1:]] == [
        "shufflenet_0.5x_g3[model.export]",
        "shufflenet_0.5x_g3[TFLiteConverter]",
    ]
    for s in specs:
        for mode in ("float32", "int8"):
            latency.convert_cached(
                s, (64, 64), mode, tmp_path, num_calibration_images=1
            )
    assert calls == [
        (route, mode)
        for route in lite_standard.ROUTES
        for mode in ("float32", "int8")
    ]
    with pytest.raises(ValueError, match="`route` must be one of"):
        lite_specs.with_route(spec, "onnx")


def test_a_user_tflite_spec_is_checked(tmp_path):
    with pytest.raises(ValueError, match="Expected a .tflite"):
        lite_specs.tflite_spec("model.onnx")
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        lite_specs.tflite_spec(tmp_path / "missing.tflite")
    with pytest.raises(ValueError, match="num_threads=1"):
        benchmark.run_benchmark([], timer="cpu", num_threads=2)


def test_peers_count_the_published_flops():
    spec = lite_specs.LATENCY_PEERS["mobilenet_0.5"]
    flops = latency.model_complexity(spec, (224, 224))["flops"]
    assert flops / 1e6 == pytest.approx(149.5, abs=0.1)  # MobileNet paper


def synthetic_benchmark():
    env = latency.environment()
    row = {
        "model": "shufflenet_1.0x_g3", "family": "shufflenet",
        "mode": "float32", "resolution": "224x224", "mflops": 137.46,
        "params": 1_864_728, "size_bytes": 7 * 2**20, "xnnpack_pieces": 1,
        "num_threads": 1, "timer": "wall", "median_ms": 4.75,
        "num_runs": 50, "gflops_per_s": 2 * 137.46 / 4.75,
    }
    other = dict(row, resolution="480x640", mflops=836.7, median_ms=29.0,
                 num_runs=20, gflops_per_s=2 * 836.7 / 29.0)
    return {
        "environment": env,
        "settings": {"num_threads": 1, "timer": "wall"},
        "results": [row, other],
    }


def test_markdown_table_has_table_8_columns_and_a_caption():
    text = reporting.markdown_table(synthetic_benchmark())
    lines = text.splitlines()
    assert lines[0] == (
        "| Model | Mode | MFLOPs | Params (M) | Size (MB) | XNNPACK pieces "
        "| 224x224 ms (GFLOP/s) | 480x640 ms (GFLOP/s) |"
    )
    assert lines[2] == (
        "| shufflenet_1.0x_g3 | float32 | 137.5 | 1.86 | 7.00 | 1 "
        "| 4.75 (57.9) | 29.00 (57.7) |"
    )
    assert "50 runs at 224x224, 20 runs at 480x640" in text
    assert f"LiteRT {metadata.version('ai-edge-litert')}" in text


def test_csv_and_json_record_runtime_versions_and_cpu():
    result = synthetic_benchmark()
    rows = list(csv.DictReader(io.StringIO(reporting.results_csv(result))))
    assert len(rows) == 2
    assert rows[0]["ai_edge_litert"] == metadata.version("ai-edge-litert")
    assert rows[0]["tensorflow"] == tf.__version__
    assert rows[0]["cpu_model"] == latency.cpu_model() != ""
    assert float(rows[1]["median_ms"]) == 29.0
    loaded = json.loads(reporting.results_json(result))
    assert loaded["environment"]["ai_edge_litert"] == metadata.version(
        "ai-edge-litert"
    )
    assert loaded["results"][1]["mflops"] == 836.7


def test_plot_draws_one_point_per_model_mode_and_resolution(tmp_path):
    path = tmp_path / "latency.png"
    points = reporting.plot_latency(synthetic_benchmark(), path)
    assert points == {"224x224": 1, "480x640": 1}
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def small_net(input_shape, logits):
    """A few layers that convert in seconds (a ShuffleNet takes ~10 s)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.Conv2D(64, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(10, activation=None if logits else "softmax")(x)
    return keras.Model(inputs, x)


SMALL_NET = lite_specs.ModelSpec(
    "small_net", "test", builder=small_net, kwargs=(("version", 1),)
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One end-to-end run: a small model in float32 and int8."""
    cache = tmp_path_factory.mktemp("cache")
    spec = SMALL_NET
    messages = []
    with pytest.MonkeyPatch.context() as patch:
        # Colleagues' edits to the sources must not reset the cache here.
        patch.setattr(latency, "_source_digest", lambda: "fixed")
        result = benchmark.run_benchmark(
            [spec], [RESOLUTION], ["float32", "int8"], num_runs=3,
            warmup=1, cache_dir=cache, num_calibration_images=2,
            progress=messages.append,
        )
        yield spec, cache, result, messages


@pytest.mark.xdist_group("tiny_run")
def test_end_to_end_run_converts_times_and_reports(tiny_run):
    _, _, result, messages = tiny_run
    rows = {r["mode"]: r for r in result["results"]}
    assert set(rows) == {"float32", "int8"}
    flops = ks.complexity(small_net((160, 160, 3), False))["flops"]
    for row in rows.values():
        assert row["resolution"] == RESOLUTION
        assert row["num_runs"] == 3
        assert row["xnnpack_pieces"] == 1, row["ops_left_out"]
        assert row["mflops"] == pytest.approx(flops / 1e6)
        assert row["gflops_per_s"] == pytest.approx(
            2 * flops / (row["median_ms"] * 1e6)
        )
        assert row["size_bytes"] == os.path.getsize(row["path"])
        assert row["threads_ok"] and row["threads_started"] == 0
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
    assert sum("converting" in m for m in messages) == 2


@pytest.mark.xdist_group("tiny_run")
def test_second_run_reuses_the_cached_conversions(tiny_run, monkeypatch):
    spec, cache, first, _ = tiny_run
    monkeypatch.setattr(latency, "_source_digest", lambda: "fixed")
    messages = []
    second = benchmark.run_benchmark(
        [spec], [RESOLUTION], ["float32"], num_runs=1, warmup=0,
        cache_dir=cache, progress=messages.append,
    )
    assert not any("converting" in m for m in messages)
    paths = {r["path"] for r in first["results"]}
    assert second["results"][0]["path"] in paths


@pytest.mark.xdist_group("tiny_run")
def test_user_tflite_runs_at_its_own_size_and_type(tiny_run):
    _, _, first, _ = tiny_run
    int8 = next(r for r in first["results"] if r["mode"] == "int8")
    result = benchmark.run_benchmark(
        [lite_specs.tflite_spec(int8["path"])], num_runs=2, warmup=0,
    )
    (row,) = result["results"]
    assert row["resolution"] == RESOLUTION
    assert row["mode"] == "int8"  # Found from its ops: float in, int8 ops.
    assert row["mflops"] is None and row["family"] == "tflite"
    assert row["xnnpack_pieces"] == 1


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.xdist_group("tiny_run")
def test_thread_setting_is_honoured(tiny_run, num_threads):
    _, _, first, _ = tiny_run
    path = next(r["path"] for r in first["results"] if r["mode"] == "float32")
    runner = timing.Runner(path, num_threads=num_threads)
    times = timing.measure({"m": runner}, num_runs=30, warmup=2)
    check = timing.thread_check(times["m"], num_threads,
                                   runner.threads_started)
    # XNNPACK's pool starts num_threads - 1 workers: the setting took.
    assert runner.threads_started == num_threads - 1
    assert check["ok"], check
    if num_threads == 1:
        assert check["worker_cpu_share"] < 0.2
    wrong = timing.thread_check(times["m"], 3, runner.threads_started)
    assert not wrong["ok"]


def test_creation_orders_are_forward_reverse_then_seeded_permutations():
    orders = timing.creation_orders(5, 4)
    assert orders[0] == [0, 1, 2, 3, 4]
    assert orders[1] == [4, 3, 2, 1, 0]
    assert sorted(orders[2]) == sorted(orders[3]) == list(range(5))
    assert orders[2] != orders[3]
    assert timing.creation_orders(5, 4) == orders  # Seeded.


def test_interpreters_are_recreated_per_layout_and_runs_pooled(
    tiny_run, monkeypatch
):
    spec, cache, first, _ = tiny_run
    monkeypatch.setattr(latency, "_source_digest", lambda: "fixed")
    created = []
    real_runner = timing.Runner

    def runner(path, num_threads=1):
        created.append(os.path.basename(path))
        return real_runner(path, num_threads)

    monkeypatch.setattr(timing, "Runner", runner)
    result = benchmark.run_benchmark(
        [spec], [RESOLUTION], ["float32", "int8"], num_runs=5, warmup=0,
        cache_dir=cache, num_calibration_images=2, layouts=3,
    )
    float32, int8 = (r["path"] for r in first["results"])
    names = [os.path.basename(float32), os.path.basename(int8)]
    assert created == names + names[::-1] + created[4:]
    assert sorted(created[4:]) == sorted(names)
    assert [r["num_runs"] for r in result["results"]] == [5, 5]
    assert result["settings"]["layouts"] == 3
    with pytest.raises(ValueError, match="`layouts` must be a positive"):
        benchmark.run_benchmark([spec], layouts=0)
