"""Float, post-training int8 and quantization-aware int8 top-1 of one
recipe, measured on the TFLite models (`recipes/bench_quantization.py`).
"""

import dataclasses
import os
import statistics

from keras_shufflenet.data.pipeline import InputPipeline
from keras_shufflenet.lite.conversion import convert
from keras_shufflenet.lite.conversion import quantize_with_ai_edge_quantizer
from keras_shufflenet.lite.evaluation import evaluate_tflite
from keras_shufflenet.lite.saved_model import DEFAULT_NUM_CALIBRATION_IMAGES
from keras_shufflenet.lite.saved_model import calibration_images
from keras_shufflenet.models.loading import load_model
from keras_shufflenet.qat.trainer import QatTrainer
from keras_shufflenet.training.backends import train
from keras_shufflenet.training.config import resolve_config


@dataclasses.dataclass
class QuantizationSetting:
    """One row of the comparison: a recipe and how int8 quantizes it.

    Args:
        name: Row label.
        recipe_name: Name of the recipe; settings of one recipe share its
            float runs.
        recipe: An `ExperimentConfig` (its `model_dir` is set per seed).
        num_calibration_images: PTQ calibration images (training split).
        qat_epochs: Epochs of quantization-aware fine-tuning.
        qat_lr_factor: QAT's learning rate as a fraction of the recipe's.
        qat_warmup_epochs: QAT's linear warm-up to that rate.
        per_tensor_depthwise: One weight scale per depthwise kernel, both
            ways: PTQ by the AI Edge Quantizer (the converter can only
            make every kernel per-tensor), QAT with the batch norms folded
            first (`qat_per_tensor_depthwise`). Other weights per channel.
    """

    name: str
    recipe_name: str
    recipe: object
    num_calibration_images: int = DEFAULT_NUM_CALIBRATION_IMAGES
    qat_epochs: float = 2.0
    qat_lr_factor: float = 0.1
    qat_warmup_epochs: float = 0.0
    per_tensor_depthwise: bool = False


def compare_quantization(setting, seed, work_dir, verbose=False):
    """Trains the float model, quantizes it both ways, evaluates all three.

    Every accuracy is the TFLite model's on the full evaluation split.

    Args:
        setting: A `QuantizationSetting`.
        seed: `train.seed` of the float run (and of QAT).
        work_dir: Where the runs go (`<recipe_name>/seed<seed>/float`,
            `<name>/seed<seed>/qat`); a finished run is reused, an
            interrupted one resumed.
        verbose: Print training progress.

    Returns:
        A dict: `setting`, `seed`, `float_top1`, `ptq_top1`, `qat_top1`,
        `qat_keras_top1` (the fake-quantized Keras model),
        `qat_tflite_agreement` (top-1 agreement of TFLite and QAT Keras)
        and how their logits differ in output steps:
        `qat_logits_equal` and `qat_logits_within_two_steps` (fractions
        of the logits) and `qat_logits_max_steps`.
    """
    config = dataclasses.replace(
        setting.recipe,
        model_dir=os.path.join(
            work_dir, setting.recipe_name, f"seed{seed}", "float"
        ),
        train=dataclasses.replace(setting.recipe.train, seed=seed),
    )
    config = resolve_config(config)
    float_result = train(config, verbose=verbose)
    model = load_model(float_result.keras_path)
    pipeline = InputPipeline(config.data)
    dataset = pipeline.dataset(False, config.train.eval_batch_size or 100)
    float_top1 = evaluate_tflite(
        convert(model, logits=True), dataset
    )["tflite_top1"]
    calibration = calibration_images(
        config.data, setting.num_calibration_images
    )
    if setting.per_tensor_depthwise:
        ptq = quantize_with_ai_edge_quantizer(
            convert(model, logits=True),
            calibration,
            num_calibration_images=setting.num_calibration_images,
            per_tensor_ops=("DEPTHWISE_CONV_2D",),
        )
    else:
        ptq = convert(
            model,
            mode="int8",
            calibration_data=calibration,
            num_calibration_images=setting.num_calibration_images,
            logits=True,
        )
    ptq_top1 = evaluate_tflite(ptq, dataset)["tflite_top1"]

    qat_config = dataclasses.replace(
        config,
        model_dir=os.path.join(work_dir, setting.name, f"seed{seed}", "qat"),
        qat_from=float_result.keras_path,
        qat_per_tensor_depthwise=setting.per_tensor_depthwise,
        optimizer=dataclasses.replace(
            config.optimizer,
            lr=config.optimizer.lr * setting.qat_lr_factor,
            warmup_epochs=setting.qat_warmup_epochs,
        ),
        train=dataclasses.replace(
            config.train, epochs=setting.qat_epochs, bn_recalibration_epochs=0
        ),
    )
    trainer = QatTrainer(qat_config, verbose=verbose)
    qat_result = trainer.fit()
    qat_eval = evaluate_tflite(
        qat_result.tflite_path, dataset, keras_model=trainer.model
    )
    return {
        "setting": setting.name,
        "seed": seed,
        "float_top1": float_top1,
        "ptq_top1": ptq_top1,
        "qat_top1": qat_eval["tflite_top1"],
        "qat_keras_top1": qat_eval["keras_top1"],
        "qat_tflite_agreement": qat_eval["top1_agreement"],
        "qat_logits_equal": qat_eval["steps_equal"],
        "qat_logits_within_two_steps": qat_eval["steps_within_two"],
        "qat_logits_max_steps": qat_eval["max_steps"],
    }


def summarize_comparison(rows):
    """Mean and spread (min-max) of each accuracy, per setting.

    Returns:
        A list of dicts: `setting`, `seeds`, and for `float`, `ptq`,
        `qat` the `mean`, `min` and `max` top-1 and the PTQ and QAT losses
        against float (points); `recovered`, the fraction of PTQ's loss
        that QAT wins back.
    """
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    summary = []
    for name in settings:
        mine = [row for row in rows if row["setting"] == name]
        entry = {"setting": name, "seeds": [row["seed"] for row in mine]}
        for kind in ("float", "ptq", "qat"):
            values = [100 * row[f"{kind}_top1"] for row in mine]
            entry[kind] = {
                "mean": statistics.mean(values),
                "min": min(values),
                "max": max(values),
            }
        ptq_loss = entry["float"]["mean"] - entry["ptq"]["mean"]
        qat_loss = entry["float"]["mean"] - entry["qat"]["mean"]
        entry["ptq_loss"] = ptq_loss
        entry["qat_loss"] = qat_loss
        entry["recovered"] = (
            (ptq_loss - qat_loss) / ptq_loss if ptq_loss > 0 else None
        )
        summary.append(entry)
    return summary


def format_summary(summary):
    """The comparison as a Markdown table."""

    def cell(stats):
        return (
            f"{stats['mean']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})"
        )

    lines = [
        "| setting | seeds | float top-1 % | PTQ int8 top-1 % | "
        "QAT int8 top-1 % | PTQ loss (pt) | QAT loss (pt) | recovered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        recovered = entry["recovered"]
        lines.append(
            f"| {entry['setting']} | {len(entry['seeds'])} | "
            f"{cell(entry['float'])} | {cell(entry['ptq'])} | "
            f"{cell(entry['qat'])} | {entry['ptq_loss']:.2f} | "
            f"{entry['qat_loss']:.2f} | "
            + ("n/a" if recovered is None else f"{recovered:.0%}")
            + " |"
        )
    return "\n".join(lines)
