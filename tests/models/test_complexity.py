"""Complexity accounting against the paper's tables and the official
release's parameter counts."""

import keras
import pytest

import keras_shufflenet as ks
from keras_shufflenet.models.complexity import OFFICIAL_COMPLEXITY
from keras_shufflenet.models.complexity import PAPER_MFLOPS
from keras_shufflenet.models.complexity import complexity_table
from keras_shufflenet.models.complexity import format_table


@pytest.mark.parametrize("key", sorted(PAPER_MFLOPS))
def test_flops_reproduce_tables_1_and_5(key):
    scale, groups, se, shallow = key
    flops = ks.complexity(ks.ShuffleNet(scale, groups, se, shallow=shallow))
    paper = PAPER_MFLOPS[key] * 1e6
    # "0.5x shallow" widens by sqrt(2); the paper gives no widths for it.
    tolerance = 0.05 if shallow else 0.03
    assert abs(flops["flops"] / paper - 1) <= tolerance, flops["flops"]


@pytest.mark.parametrize("key", sorted(OFFICIAL_COMPLEXITY))
def test_params_and_flops_match_the_official_release(key):
    mflops, mparams = OFFICIAL_COMPLEXITY[key]
    measured = ks.complexity(ks.ShuffleNet(*key))
    assert round(measured["params"] / 1e6, 1) == mparams
    assert abs(measured["flops"] / (mflops * 1e6) - 1) <= 0.03


def test_flops_of_a_unit_are_the_papers_formula():
    """Section 3.2: a ShuffleNet unit costs hw(2cm/g + 9m)."""
    h = w = 14
    c, m, g = 480, 120, 3
    inputs = keras.Input((h, w, c))
    x = ks.PointwiseGroupConv2D(m, g)(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = ks.PointwiseGroupConv2D(c, g)(x)
    model = keras.Model(inputs, x)
    assert ks.complexity(model)["flops"] == h * w * (2 * c * m // g + 9 * m)


def test_dense_and_conv_flops_are_multiply_adds():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, x)
    assert ks.complexity(model)["flops"] == 4 * 4 * 3 * 3 * 3 * 4 + 4 * 5


def test_params_exclude_batch_norm_moving_statistics():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 1, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, x)
    assert ks.complexity(model)["params"] == 3 * 4 + 2 * 4


def test_dynamic_models_are_counted_at_a_given_size():
    model = ks.ShuffleNet(1.0, 3, include_top=False,
                          input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="input_shape"):
        ks.complexity(model)
    fixed = ks.complexity(ks.ShuffleNet(1.0, 3, include_top=False))
    assert ks.complexity(model, input_shape=(224, 224, 3)) == fixed


def test_complexity_table_rows_and_markdown():
    rows = complexity_table(scales=(1.0,), groups=(3,))
    assert [(r["se"], r["shallow"]) for r in rows] == [
        (False, False), (True, False), (False, True)]
    plain = rows[0]
    assert plain["paper_mflops"] == 137 and plain["official_mparams"] == 1.9
    assert plain["mflops"] == pytest.approx(137.5, abs=0.1)
    assert plain["mflops_diff_pct"] == pytest.approx(0.3, abs=0.05)
    table = format_table(rows)
    assert "| ShuffleNet 1x (g=3) | 137.5 | 137 | +0.3% | 138 | 1.86 | 1.9 |" \
        in table
    assert "ShuffleNet 1x (g=3) + SE" in table


@pytest.mark.parametrize("scale,mflops", [(0.25, 13), (0.5, 38)])
@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_flops_reproduce_table_2_for_1_to_4_groups(scale, mflops, groups):
    flops = ks.complexity(ks.ShuffleNet(scale, groups))["flops"]
    assert abs(flops / (mflops * 1e6) - 1) <= 0.03, flops
