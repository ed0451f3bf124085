"""Config loading: defaults, overrides and the one-message errors of the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mdd.cli import run_main
from mdd.config import Config, load_config
from mdd.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_experiments_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MDD_DIT_XL_2", "MDD_IMAGENET_TRAIN", "MDD_IMAGENET_VAL"):
        monkeypatch.setenv(name, f"/data/{name.lower()}")
    for path in sorted(Path("experiments").rglob("*.yaml")):
        assert isinstance(load_config(path), Config), path


def test_values_from_the_file_override_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"finetune": {"lambda_r": 0.5}, "sample": {"ipc": 50}}))
    assert config.finetune.lambda_r == 0.5
    assert config.sample.ipc == 50
    assert config.finetune.lambda_d == 0.008  # untouched default (METHOD.md section 2)


def test_set_overrides_apply_with_yaml_types(tmp_path: Path) -> None:
    path = write(tmp_path, {"sample": {"ipc": 10}})
    config = load_config(
        path,
        ["sample.ipc=50", "finetune.lambda_d=0.02", "eval.networks=[convnet3, resnet18]"],
    )
    assert config.sample.ipc == 50
    assert config.finetune.lambda_d == pytest.approx(0.02)
    assert config.eval.networks == ["convnet3", "resnet18"]


def test_unknown_key_names_file_field_and_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, {"finetune": {"lamda_r": 0.1}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    assert "finetune.lamda_r" in message
    assert "lambda_r" in message  # the hint lists the real key
    assert error.value.exit_code == 2


def test_wrong_type_names_field_expected_and_given(tmp_path: Path) -> None:
    path = write(tmp_path, {"sample": {"ipc": "many"}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "sample.ipc" in message and "integer" in message and "'many'" in message


def test_bad_override_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    with pytest.raises(ConfigError, match="unknown key 'sample.ipcs'"):
        load_config(path, ["sample.ipcs=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["sample.ipc"])


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "no such config file"),
        ("finetune: [1, 2", "not valid YAML"),
        ("seed: [1]", "field 'seed'"),
        ("finetune:\n  lambda_r: -1", "finetune.lambda_r"),
    ],
)
def test_cli_reports_config_errors_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, fragment: str
) -> None:
    path = tmp_path / "exp.yaml"
    if content is not None:
        path.write_text(content)
    assert run_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdd: error: ")
    assert fragment in err
    assert "Traceback" not in err


def test_section_hash_changes_only_with_its_section() -> None:
    config = Config()
    changed = config.model_copy(deep=True)
    changed.sample.ipc = 50
    assert config.section_hash("finetune") == changed.section_hash("finetune")
    assert config.section_hash("sample") != changed.section_hash("sample")


def test_environment_variables_expand_and_missing_ones_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, {"data": {"root": "${MDD_TEST_ROOT}/train"}})
    monkeypatch.setenv("MDD_TEST_ROOT", "/data/imagenet")
    assert load_config(path).data.root == Path("/data/imagenet/train")
    monkeypatch.delenv("MDD_TEST_ROOT")
    with pytest.raises(
        ConfigError, match=r"'data.root' uses \$\{MDD_TEST_ROOT\}, which is not set"
    ):
        load_config(path)


def test_extends_merges_the_parent_file_underneath(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("sample:\n  ipc: 10\n  steps: 25\nseed: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nsample:\n  ipc: 50\n")
    config = load_config(child)
    assert (config.sample.ipc, config.sample.steps, config.seed) == (50, 25, 3)


def test_imagewoof_experiments_say_which_variable_is_missing(monkeypatch) -> None:
    for name in ("MDD_DIT_XL_2", "MDD_IMAGENET_TRAIN", "MDD_IMAGENET_VAL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"MDD_IMAGENET_TRAIN.*not set"):
        load_config("experiments/imagewoof/minimax_ipc10.yaml")


def test_shipped_base_path_resolves_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # experiments/fashion_mnist.yaml names mdd/assets/fashion_mnist_base; a run started
    # elsewhere (a sweep benchmark's temp folder, a user's own project) must still find it.
    experiment = EXPERIMENTS / "fashion_mnist.yaml"
    monkeypatch.chdir(tmp_path)
    checkpoint = load_config(experiment).pretrain.checkpoint
    assert checkpoint is not None and checkpoint.is_absolute()
    assert (checkpoint / "base.json").is_file()


def test_other_relative_checkpoints_stay_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\npretrain:\n  checkpoint: bases/mine\n")
    assert load_config(path).pretrain.checkpoint == Path("bases/mine")


def test_finetune_length_is_epochs_or_steps_and_an_override_of_one_replaces_the_other(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, {"finetune": {"epochs": 3}})
    assert load_config(path).finetune.total_steps(1000) == 94  # ceil(3 * 1000 / 32)
    by_steps = load_config(path, ["finetune.steps=400"]).finetune
    assert (by_steps.steps, by_steps.epochs, by_steps.total_steps(1000)) == (400, None, 400)
    child = tmp_path / "child.yaml"
    child.write_text("extends: exp.yaml\nfinetune:\n  steps: 50\n")
    assert load_config(child).finetune.total_steps(10**6) == 50
    with pytest.raises(ConfigError, match="finetune.steps or finetune.epochs, not both"):
        load_config(write(tmp_path, {"finetune": {"epochs": 1, "steps": 10}}))


def test_auto_ema_gives_the_base_the_papers_share_at_any_length() -> None:
    finetune = Config().finetune
    assert finetune.ema_decay == "auto"
    assert finetune.decay_for(12000) == pytest.approx(0.9999)  # the paper's own run
    for steps in (100, 800, 3438):
        assert finetune.decay_for(steps) ** steps == pytest.approx(0.9999**12000)
    fixed = finetune.model_copy(update={"ema_decay": 0.99})
    assert fixed.decay_for(100) == 0.99
