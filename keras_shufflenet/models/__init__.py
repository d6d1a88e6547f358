"""The model stage: ShuffleNet v1 itself. Imports nothing else of this
package but `utils`.

A user of this stage calls:

- `ShuffleNet(scale, groups, se=False, ...)`, the network of Table 1, and
  `preprocess_input`, `feature_extractor` (section 4.4) and
  `shufflenet_widths`;
- its two layers, `ChannelShuffle` and `PointwiseGroupConv2D`, with
  `shuffle_permutation` and `set_group_conv_implementation`;
- `complexity`, `complexity_table` and `layer_flops` (Tables 1, 2, 5);
- `network_parts` and `layer_name`: a built model's stem, units and head
  by role, the one description every derived graph and converter reads;
- `load_model` and `load_weights`, which load in safe mode with errors
  that name the file; `variant_name` and `parse_variant_name`.

The modules hold what other stages use: `lowering` (the layers the model
lowers to at inference), `graph` (unit analysis for the derived graphs),
`pretrained` (the hook through which the `weights` stage resolves
`weights="imagenet"` and checkpoint files) and `checks`.
"""

from keras_shufflenet.models.complexity import complexity
from keras_shufflenet.models.complexity import complexity_table
from keras_shufflenet.models.complexity import layer_flops
from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.layers import set_group_conv_implementation
from keras_shufflenet.models.layers import shuffle_permutation
from keras_shufflenet.models.loading import load_model
from keras_shufflenet.models.loading import load_weights
from keras_shufflenet.models.naming import parse_variant_name
from keras_shufflenet.models.naming import variant_name
from keras_shufflenet.models.parts import layer_name
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.models.shufflenet import feature_extractor
from keras_shufflenet.models.shufflenet import preprocess_input
from keras_shufflenet.models.shufflenet import shufflenet_widths
