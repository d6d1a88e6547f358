"""One description of a ShuffleNet's parts and of the names of their layers.

A ShuffleNet (Table 1) is an input normalisation, a stem, stages of units
(Figure 2) and a head. Every layer plays one role in one part. `ShuffleNet`
names each layer with `layer_name`, and `network_parts` finds every role
again in a built model with that function's inverse, so that a model
loaded from a `.keras` file, cloned, wrapped by a derived graph or copied
into a `tf_keras` twin is described the same way. The fast training graph,
the deployment rewrite, the QAT twin and the checkpoint converters read
this description; no other module builds or parses a layer name.
"""

import dataclasses
import re
import types

# The input's normalisation (absent with include_preprocessing=False).
INPUT_ROLES = ("image", "preprocessing")
# Table 1's Conv1 (3x3/2, BN, ReLU) and MaxPool (3x3/2), in order.
STEM_ROLES = (
    "conv1_pad", "conv1", "conv1_bn", "conv1_relu", "pool1_pad", "pool1",
)
# Figure 2 (b) and (c): a unit's layers in the order it computes them. The
# branch; squeeze-and-excitation (Table 5); then a stride-1 unit's
# identity, or a stride-2 unit's pooled shortcut and concatenation.
BRANCH_ROLES = (
    "gconv1", "gconv1_bn", "gconv1_relu", "shuffle", "dwconv_pad",
    "dwconv", "dwconv_bn", "gconv2", "gconv2_bn",
)
SE_ROLES = ("se_squeeze", "se_reduce", "se_expand", "se_excite")
IDENTITY_ROLES = ("add", "relu")
SHORTCUT_ROLES = ("branch_relu", "shortcut_pad", "shortcut_pool", "concat")
UNIT_ROLES = BRANCH_ROLES + SE_ROLES + IDENTITY_ROLES + SHORTCUT_ROLES
# Table 1's GlobalPool and FC, or the feature pooling without them.
HEAD_ROLES = (
    "avg_pool", "max_pool", "predictions", "predictions_activation",
    "output",
)
_UNIT_PREFIX = re.compile(r"^stage(?P<stage>\d+)_unit(?P<index>\d+)_")


def unit_name(stage, index):
    """The name of unit `index` (from 1) of stage `stage`: `stage2_unit1`."""
    return f"stage{int(stage)}_unit{int(index)}"


def layer_name(role, stage=None, index=None):
    """The name of the layer that plays `role`, the one naming function.

    Args:
        role: One of `INPUT_ROLES`, `STEM_ROLES` and `HEAD_ROLES` (then
            without `stage` and `index`), or of `UNIT_ROLES`.
        stage: The stage (2, 3 or 4 in Table 1) of a unit role.
        index: The unit's position in its stage, from 1.

    Returns:
        A string, e.g. `"conv1_bn"` or `"stage2_unit1_gconv1"`.

    Raises:
        ValueError: `role` is not a role of that part.
    """
    if stage is None and index is None:
        if role not in INPUT_ROLES + STEM_ROLES + HEAD_ROLES:
            raise ValueError(
                f"{role!r} is not a role of the input, stem or head; a "
                "unit's role needs `stage` and `index`."
            )
        return role
    if role not in UNIT_ROLES:
        raise ValueError(
            f"{role!r} is not a role in a unit. Roles: {UNIT_ROLES}"
        )
    return f"{unit_name(stage, index)}_{role}"


def derived_name(name, suffix):
    """The name of a layer a derived graph makes from layer `name`.

    The fast training graph, the deployment rewrite and the QAT twin name
    what they add after the layer or unit it stands for, e.g.
    `stage2_unit2_fused`; `network_parts` ignores such names.
    """
    return f"{name}_{suffix}"


def _role(name):
    """`(role, stage, index)` of a layer name, None for other names."""
    if name in INPUT_ROLES + STEM_ROLES + HEAD_ROLES:
        return name, None, None
    match = _UNIT_PREFIX.match(name)
    if match is None:
        return None
    role = name[match.end():]
    if role not in UNIT_ROLES:
        return None
    return role, int(match["stage"]), int(match["index"])


@dataclasses.dataclass(frozen=True)
class Unit:
    """The layers of one ShuffleNet unit, by role (Figure 2).

    Attributes:
        stage: The stage (2, 3 or 4 in Table 1).
        index: The unit's position in its stage, from 1.
        layers: `{role: layer}` for the roles the unit has, in the order
            of `UNIT_ROLES`.
    """

    stage: int
    index: int
    layers: types.MappingProxyType

    @property
    def name(self):
        """The unit's name, the prefix of its layers' names."""
        return unit_name(self.stage, self.index)

    @property
    def stride(self):
        """2 for a unit that concatenates a pooled shortcut, else 1."""
        return 2 if "concat" in self.layers else 1

    @property
    def output(self):
        """The layer whose output is the unit's."""
        return self.layers["concat" if self.stride == 2 else "relu"]

    @property
    def has_se(self):
        return "se_excite" in self.layers

    def __getitem__(self, role):
        return self.layers[role]

    def get(self, role, default=None):
        return self.layers.get(role, default)


@dataclasses.dataclass(frozen=True)
class NetworkParts:
    """A built ShuffleNet's layers by part and role.

    Attributes:
        input: `{role: layer}` of `INPUT_ROLES` present.
        stem: `{role: layer}` of `STEM_ROLES` present.
        units: Every `Unit`, in the order the network computes them.
        head: `{role: layer}` of `HEAD_ROLES` present.
    """

    input: types.MappingProxyType
    stem: types.MappingProxyType
    units: tuple
    head: types.MappingProxyType

    def stage(self, stage):
        """The units of stage `stage`, in order."""
        return tuple(u for u in self.units if u.stage == stage)

    def stage_outputs(self):
        """`{"stage2": layer, ...}`: each stage's last layer, in order."""
        outputs = {}
        for unit in self.units:
            outputs[f"stage{unit.stage}"] = unit.output
        return outputs

    def layers(self):
        """Every layer of a part, in the order of the parts."""
        yield from self.input.values()
        yield from self.stem.values()
        for unit in self.units:
            yield from unit.layers.values()
        yield from self.head.values()


def _ordered(found, roles):
    return types.MappingProxyType(
        {role: found[role] for role in roles if role in found}
    )


def network_parts(model, require=("stem", "units")):
    """Describes a model built by `ShuffleNet` by its parts and roles.

    Reads the layer names `layer_name` gives, so it works on a model
    loaded from a file, a clone, the `tf_keras` twin, or any functional
    model named the same way; other layers are left out.

    Reference:
        Table 1 (the stem, stages and head) and Figure 2 (the units).

    Args:
        model: A functional model (Keras 3 or `tf_keras`).
        require: The parts `model` must have: any of `"stem"`, `"units"`
            and `"head"`. Pass `()` to describe any model (a model of
            other layers then has no parts). Defaults to
            `("stem", "units")`.

    Returns:
        A `NetworkParts`.

    Raises:
        ValueError: A required part is missing; the message names the
            model.
    """
    found = {}
    units = {}
    for layer in model.layers:
        parsed = _role(layer.name)
        if parsed is None:
            continue
        role, stage, index = parsed
        if stage is None:
            found[role] = layer
        else:
            units.setdefault((stage, index), {})[role] = layer
    parts = NetworkParts(
        input=_ordered(found, INPUT_ROLES),
        stem=_ordered(found, STEM_ROLES),
        units=tuple(
            Unit(stage, index, _ordered(layers, UNIT_ROLES))
            for (stage, index), layers in sorted(units.items())
        ),
        head=_ordered(found, HEAD_ROLES),
    )
    missing = [part for part in require if not getattr(parts, part)]
    if missing:
        raise ValueError(
            f"Model {model.name!r} is not a ShuffleNet: it has no layers "
            f"of its {' or '.join(missing)} (named as "
            "keras_shufflenet.models.parts.layer_name names them)."
        )
    return parts
