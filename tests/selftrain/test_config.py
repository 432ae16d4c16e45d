from pathlib import Path

import pytest

from selftrain.config import RunConfig, load_config
from selftrain.errors import SelftrainError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_are_shipped():
    assert SHIPPED, "configs/ holds no YAML file"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_names_its_command(path):
    load_config(path)
    first = path.read_text().splitlines()[:3]
    assert any("selftrain " in line for line in first), "first comment should give the command that runs it"


def test_digits_yaml_is_the_built_in_default():
    assert load_config(ROOT / "configs" / "digits.yaml") == RunConfig()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("teacher.lrr=0.1", "teacher.lrr: unknown key"),
        ("device=tpu", "device: Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"),
        ("teacher.optimizer=lamb", "teacher.optimizer: Input should be 'adamw' or 'sgd'"),
        ("teacher.steps=0", "teacher.steps: Input should be greater than or equal to 1 (got 0)"),
        (
            "pseudolabel.confidence_threshold=1.5",
            "pseudolabel.confidence_threshold: Input should be less than or equal to 1",
        ),
        ("teacher.lr=fast", "teacher.lr: Input should be a valid number"),
        ("nokey", "expected key=value"),
    ],
)
def test_bad_values_give_one_line_naming_the_field(override, expected):
    with pytest.raises(SelftrainError) as info:
        load_config(None, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        None, ["teacher.steps=12", "teacher.warmup_steps=2", "teacher.augment.hflip=true", "seed=3"]
    )
    assert (cfg.teacher.steps, cfg.teacher.augment.hflip, cfg.seed) == (12, True, 3)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(SelftrainError, match=r"bad\.yaml: line \d+ is not valid YAML"):
        load_config(bad)
    with pytest.raises(SelftrainError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override", ["student.ema_decay=0.5", "mpl.finetune.lr=0.001", "teacher.lr=0.01"])
def test_a_partial_section_keeps_that_sections_defaults(override):
    """Setting one key must not swap a section's other defaults for another section's."""
    default, changed = RunConfig().model_dump(), load_config(None, [override]).model_dump()
    section, *path = override.split("=")[0].split(".")
    for key in default[section]:
        if key != path[0]:
            assert changed[section][key] == default[section][key], (section, key)
