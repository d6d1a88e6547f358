"""`recipes/bench_finetune.py`'s data and table (the runs themselves are
the training recipe, tested in test_finetune.py)."""

import os

from keras_shufflenet.training import transfer_benchmark as tb


def test_few_shot_folders_split_the_digits_and_draw_by_seed(tmp_path):
    folders = tb.write_digits(tmp_path / "a", shots=3, seed=0)
    train, evaluation = folders["target"]
    assert sorted(os.listdir(train)) == [str(c) for c in tb.TARGET_CLASSES]
    assert all(len(os.listdir(os.path.join(train, c))) == 3
               for c in os.listdir(train))
    pretrain, _ = folders["pretrain"]
    assert sorted(os.listdir(pretrain)) == [
        str(c) for c in tb.PRETRAIN_CLASSES
    ]
    # The new classes' held-out images, all of them.
    assert sum(len(os.listdir(os.path.join(evaluation, c)))
               for c in os.listdir(evaluation)) > 100

    def drawn(seed):
        train, _ = tb.write_digits(tmp_path / str(seed), 3, seed)["target"]
        return {
            c: sorted(open(os.path.join(train, c, f), "rb").read()
                      for f in os.listdir(os.path.join(train, c)))
            for c in os.listdir(train)
        }

    assert drawn(1) != drawn(2)


def test_the_table_gives_each_settings_mean_and_range_per_shots():
    rows = [
        {"setting": "fine-tuned", "top1": {3: [0.75, 0.80, 0.85],
                                           10: [0.9, 0.9, 0.9]}},
        {"setting": "from scratch", "top1": {3: [0.5, 0.6, 0.7],
                                             10: [0.8, 0.85, 0.9]}},
    ]
    table = tb.format_transfer_table(rows, steps=150).splitlines()
    assert table[0] == (
        "| digits 6-9, 150 steps | 3 images per class | "
        "10 images per class |"
    )
    assert table[2] == "| fine-tuned | 80.0% (75.0-85.0) | 90.0% (90.0-90.0) |"
    assert table[3] == (
        "| from scratch | 60.0% (50.0-70.0) | 85.0% (80.0-90.0) |"
    )
