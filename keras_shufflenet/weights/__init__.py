"""The weights stage: checkpoints of other implementations, read, checked
and mapped onto `ShuffleNet` through `models.parts`. Imports `models`.

A user of this stage calls `from_official_checkpoint(path, scale,
groups)`, a `ShuffleNet` holding an official release checkpoint, and
`convert_official_checkpoint`, which writes it as `.keras` and
`.weights.h5` files where `ShuffleNet(weights=<name>)` finds them.
"""

from keras_shufflenet.weights.official import convert_official_checkpoint
from keras_shufflenet.weights.official import from_official_checkpoint
