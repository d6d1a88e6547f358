"""The weights stage: published ImageNet checkpoints of ShuffleNet v1 from
every public source, downloaded, checked and converted on first use, and
checkpoint files of those sources read without running code from them.
Imports `models` and `utils`, and registers itself with
`models.pretrained`, so that `ShuffleNet(weights=...)` takes
`"imagenet"`, an entry's name or a checkpoint file.

A user of this stage calls:

- `pretrained_weights()`, the table of every entry (the README's);
- `read_checkpoint(path)`, a checkpoint's source and tensors, read
  safely (`UnsafeCheckpointError` for a pickle that asks for code);
- `from_official_checkpoint` and `convert_official_checkpoint`, for the
  official release's files, downloaded by hand;
- `weights_home()`, the cache (`$KERAS_SHUFFLENET_HOME`).
"""

from keras_shufflenet.weights.download import weights_home
from keras_shufflenet.weights.official import convert_official_checkpoint
from keras_shufflenet.weights.official import from_official_checkpoint
from keras_shufflenet.weights.registry import pretrained_weights
from keras_shufflenet.weights.resolve import read_checkpoint
from keras_shufflenet.weights.torch_reader import UnsafeCheckpointError
