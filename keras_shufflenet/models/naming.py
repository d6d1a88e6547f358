"""One spelling for every ShuffleNet variant: `shufflenet_1.0x_g3`.

Model names, recipe files, benchmark rows and pretrained weights all come
from `variant_name`, and every name a user types is read back with
`parse_variant_name`. The scale is written as Python writes the float
(`0.25x`, `0.5x`, `1.0x`, `1.5x`, `2.0x`), as in "ShuffleNet 1x" of the
paper's tables.
"""

import re

_NAME = re.compile(
    r"^(?P<prefix>[a-z][a-z_]*?)_(?P<scale>\d+(?:\.\d+)?)x_g(?P<groups>\d+)"
    r"(?P<suffix>(?:_\w+)?)$"
)
_FLAGS = ("shallow", "se", "noshuffle")


def variant_name(
    scale, groups, *, shallow=False, se=False, shuffle=True,
    prefix="shufflenet",
):
    """The name of a ShuffleNet variant, e.g. `shufflenet_1.0x_g3_se`.

    Reference:
        Table 1 ("ShuffleNet 1x", g = 1 to 8), Table 5 (shallow, SE) and
        Table 3 (no shuffle).

    Args:
        scale: Width multiplier.
        groups: Groups of the pointwise convolutions.
        shallow: Adds `_shallow`.
        se: Adds `_se`.
        shuffle: False adds `_noshuffle`.
        prefix: What the name is of. Defaults to `"shufflenet"`.

    Returns:
        A string.
    """
    name = f"{prefix}_{float(scale)}x_g{int(groups)}"
    return name + "_shallow" * shallow + "_se" * se + "_noshuffle" * (
        not shuffle
    )


def parse_variant_name(name, prefix="shufflenet", argument="name"):
    """Reads `variant_name`'s spelling back.

    Args:
        name: A name such as `"shufflenet_0.5x_g8_shallow_split"`.
        prefix: The expected prefix.
        argument: The argument or flag the name came from, for messages.

    Returns:
        A dict with `scale` (float), `groups` (int), `shallow`, `se`,
        `shuffle` (bools) and `suffix`: what follows the variant, without
        its leading underscore (`"split"` above; `""` if nothing).

    Raises:
        ValueError: `name` is not `<prefix>_<scale>x_g<groups>[_...]`, with
            the scale as `variant_name` writes it.
    """
    match = _NAME.match(name) if isinstance(name, str) else None
    if match is None or match["prefix"] != prefix:
        raise ValueError(
            f"`{argument}` must be spelled '{prefix}_<scale>x_g<groups>', "
            f"e.g. {variant_name(1.0, 3, prefix=prefix)!r}. Received: "
            f"{argument}={name!r}"
        )
    words = [w for w in match["suffix"].split("_") if w]
    flags = {w: w in words for w in _FLAGS}
    parsed = {
        "scale": float(match["scale"]),
        "groups": int(match["groups"]),
        "shallow": flags["shallow"],
        "se": flags["se"],
        "shuffle": not flags["noshuffle"],
        "suffix": "_".join(w for w in words if w not in _FLAGS),
    }
    if match["scale"] != str(parsed["scale"]):
        raise ValueError(
            f"`{argument}` spells the scale as {match['scale']!r}; write it "
            f"as Python writes the float, {parsed['scale']!r}. Received: "
            f"{argument}={name!r}"
        )
    return parsed
