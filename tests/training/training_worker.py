"""One worker of the two-process MultiWorkerMirroredStrategy test.

Usage: training_worker.py CONFIG_JSON OUTPUT_NPZ, with TF_CONFIG set. Trains
the config with `keras_shufflenet.training.train` and saves every weight of
the trained model, in order, to OUTPUT_NPZ together with the final step.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The repository root, two folders up.
sys.path.insert(
    0,
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ),
)

import numpy as np

from keras_shufflenet import training
from keras_shufflenet.training import config as training_config


def main(config_json, output_npz):
    with open(config_json) as f:
        config = training_config.config_from_dict(json.load(f))
    result = training.train(config, verbose=False)
    weights = {
        f"{i:04d}_{w.path}": w.numpy()
        for i, w in enumerate(result.model.weights)
    }
    np.savez(
        output_npz, step=result.step, top1=result.metrics["top1"], **weights
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
