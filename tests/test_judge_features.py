"""The judge's features of the training split are computed once, kept in the judge's stage
folder, and read back after."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from mdd.config import Config
from mdd.data.load import load_dataset
from mdd.eval.judge import Judge, load_judge, train_features


def test_the_training_splits_features_are_cached_beside_the_judge(tiny_config: Config) -> None:
    data = load_dataset(tiny_config.data)
    judge = load_judge(data, tiny_config.judge_spec, torch.device("cpu"))
    computed = train_features(lambda: judge, data, tiny_config.judge_spec)
    assert torch.equal(computed, judge.features(data.train.images))
    assert computed.shape[0] == len(data.train)
    (cached,) = (tiny_config.cache_dir / "judge").glob("*/*-features.safetensors")
    # A second call (a later selection, another sweep trial) reads the file, neither the
    # images nor the judge's weights: replaced contents come back, the judge is not asked for.
    marked = computed + 7.0
    save_file({"features": marked}, str(cached))

    def no_judge() -> Judge:
        raise AssertionError("the judge was loaded although its features are kept")

    assert torch.equal(train_features(no_judge, data, tiny_config.judge_spec), marked)
