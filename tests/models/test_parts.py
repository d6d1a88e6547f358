"""`models.parts`: one description of a ShuffleNet's parts, which names
every layer when the model is built and finds it again afterwards."""

import keras
import pytest

import keras_shufflenet as ks
from keras_shufflenet.models import parts


def test_layer_name_is_the_one_spelling_of_a_role():
    assert parts.layer_name("gconv1", 2, 1) == "stage2_unit1_gconv1"
    assert parts.layer_name("conv1_bn") == "conv1_bn"
    assert parts.unit_name(4, 3) == "stage4_unit3"
    with pytest.raises(ValueError, match="not a role in a unit"):
        parts.layer_name("conv9", 2, 1)
    with pytest.raises(ValueError, match="needs `stage` and `index`"):
        parts.layer_name("gconv1")


@pytest.mark.parametrize(
    "kwargs, units",
    [
        (dict(scale=0.25, groups=3, se=True, shallow=True), (2, 4, 2)),
        (dict(scale=0.25, groups=1, include_top=False, pooling="max"),
         (4, 8, 4)),
    ],
)
def test_every_layer_of_a_built_model_plays_one_role(kwargs, units):
    model = ks.ShuffleNet(input_shape=(32, 32, 3), **kwargs)
    found = ks.network_parts(model)
    described = list(found.layers())
    assert len(described) == len(set(map(id, described)))
    assert {id(layer) for layer in described} == {
        id(layer) for layer in model.layers
    }
    assert tuple(len(found.stage(s)) for s in (2, 3, 4)) == units
    assert [u.stride for u in found.stage(3)] == [2] + [1] * (units[1] - 1)
    assert all(u.has_se == kwargs.get("se", False) for u in found.units)
    # groups=1 has nothing to shuffle.
    assert all(
        ("shuffle" in u.layers) == (kwargs["groups"] > 1) for u in found.units
    )
    first = found.units[0]
    assert first.name == "stage2_unit1"
    assert first["gconv1"] is model.get_layer("stage2_unit1_gconv1")
    assert first.output is model.get_layer("stage2_unit1_concat")


def test_stage_outputs_are_each_stages_last_unit():
    model = ks.ShuffleNet(0.25, 3, include_top=False, input_shape=(64, 64, 3))
    outputs = ks.network_parts(model).stage_outputs()
    assert {k: v.name for k, v in outputs.items()} == {
        "stage2": "stage2_unit4_relu",
        "stage3": "stage3_unit8_relu",
        "stage4": "stage4_unit4_relu",
    }
    features = ks.feature_extractor(model)(keras.ops.zeros((1, 64, 64, 3)))
    assert {k: v.shape[1] for k, v in features.items()} == {
        "stage2": 8, "stage3": 4, "stage4": 2,
    }


def test_a_model_of_other_layers_has_no_parts():
    inputs = keras.Input((8, 8, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs), name="c")
    with pytest.raises(ValueError, match="Model 'c' is not a ShuffleNet"):
        ks.network_parts(other)
    assert ks.network_parts(other, require=()).units == ()


def test_layers_a_derived_graph_adds_are_not_parts():
    model = ks.ShuffleNet(0.25, 3, shallow=True, input_shape=(32, 32, 3))
    trainer = ks.training_model(model)
    names = {layer.name for layer in trainer.layers}
    assert parts.derived_name("stage2_unit2", "fused") in names
    assert parts.derived_name("stage2_unit1_gconv1_bn", "fast") in names
    # Fused stride-1 units and the wrapped batch norms are no parts; the
    # stride-2 units' own layers, called as they are, still are.
    found = ks.network_parts(trainer)
    assert [u.name for u in found.units] == [
        "stage2_unit1", "stage3_unit1", "stage4_unit1"
    ]
    assert "gconv1_bn" not in found.units[0].layers
    assert found.units[0]["gconv1"] is model.get_layer("stage2_unit1_gconv1")
