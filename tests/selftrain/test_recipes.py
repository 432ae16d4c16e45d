"""The recipe a run starts from is chosen from its data set, saved, overridable, and shipped."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from commands.cli import main
from selftrain import augment_rng
from selftrain.config import RunConfig, load_config
from selftrain.errors import SelftrainError
from selftrain.models import build_model, count_parameters
from selftrain.run_inputs import open_run
from selftrain.runstore import RunStore
from selftrain.transforms import RandomPadCrop

ROOT = Path(__file__).resolve().parents[2]


def import_photos(tmp_path: Path, shape: tuple[int, ...] = (16, 16, 3), name: str = "photos") -> Path:
    """A tiny ImageFolder data set of random images of `shape`, imported as a user would."""
    src = tmp_path / f"{name}-src"
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2), ("unlabeled", 4)):
        for label in ("cat", "dog"):
            (src / split / label).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(
                    src / split / label / f"{i}.png"
                )
    out = tmp_path / name
    assert (
        main(
            [
                "data",
                "import",
                "--labeled",
                str(src / "train"),
                "--unlabeled",
                str(src / "unlabeled"),
                "--test",
                str(src / "test"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.fixture
def photos(tmp_path) -> Path:
    return import_photos(tmp_path)


def test_colour_data_gets_the_photo_recipe_and_saves_it(photos, tmp_path):
    store = RunStore(tmp_path / "run")
    cfg = store.open(photos, None, [])
    assert cfg.recipe == "photos"
    assert cfg.teacher.augment.hflip and cfg.teacher.augment.pad_crop > 0
    assert cfg.teacher.augment.rotate_degrees == 0
    # Photo students train on mixed batches; the teacher does not (a mixed teacher labels worse).
    assert (cfg.student.mixup_alpha, cfg.student.cutmix_alpha) == (0.8, 1.0)
    assert (cfg.teacher.mixup_alpha, cfg.teacher.cutmix_alpha) == (0.0, 0.0)
    assert (cfg.mpl.student_mixup_alpha, cfg.mpl.student_cutmix_alpha) == (0.8, 1.0)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["recipe"] == "photos" and saved["teacher"]["augment"]["hflip"] is True
    assert saved["student"]["mixup_alpha"] == 0.8
    assert store.config() == cfg  # resuming reads the same values back


def test_a_run_started_before_a_recipe_changed_resumes_with_the_values_it_started_with(photos, tmp_path):
    """An upgrade that gives new photo runs a new default (here the MPL finetune's layer decay) must
    not change a run directory written before it: the keys its config.yaml lacks take the schema's
    defaults (the old behaviour), and --set with today's recipe is refused, not merged."""
    store = RunStore(tmp_path / "run")
    assert store.open(photos, None, []).mpl.finetune.layer_decay == 0.75
    saved = yaml.safe_load(store.config_path.read_text())
    del saved["mpl"]["finetune"]["layer_decay"]  # as a version without the key wrote it
    store.config_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    resumed = store.open(photos, None, [])
    assert resumed.mpl.finetune.layer_decay is None
    assert resumed.mpl.steps == 1000 and resumed.student.mixup_alpha == 0.8  # the rest as recorded
    with pytest.raises(SelftrainError, match=r"other values for mpl\.finetune\.layer_decay"):
        store.open(photos, None, ["seed=0"])


def test_grayscale_data_keeps_the_digits_recipe(digits_master, tmp_path):
    cfg = RunStore(tmp_path / "run").open(digits_master, None, [])
    assert cfg.recipe == "digits" and cfg == RunConfig()
    assert not cfg.teacher.augment.hflip and cfg.student.mixup_alpha == cfg.student.cutmix_alpha == 0


def test_recipe_is_overridable(photos, tmp_path):
    cfg = RunStore(tmp_path / "a").open(photos, None, ["recipe=digits"])
    assert cfg.recipe == "digits" and not cfg.teacher.augment.hflip
    cfg = RunStore(tmp_path / "b").open(photos, None, ["teacher.augment.hflip=false"])
    assert cfg.recipe == "photos" and not cfg.teacher.augment.hflip and cfg.teacher.augment.pad_crop > 0
    # A config file without `recipe:` is laid over the data set's recipe; one naming it wins.
    partial = tmp_path / "partial.yaml"
    partial.write_text("teacher:\n  steps: 123\n")
    cfg = RunStore(tmp_path / "c").open(photos, str(partial), [])
    assert cfg.recipe == "photos" and cfg.teacher.steps == 123 and cfg.teacher.augment.hflip
    cfg = RunStore(tmp_path / "d").open(photos, str(ROOT / "configs" / "digits.yaml"), [])
    assert cfg.recipe == "digits"


@pytest.mark.parametrize(
    ("shape", "size"),
    [((16, 16, 3), 32), ((48, 64, 3), 48), ((160, 200, 3), 128), ((48, 64), 32)],
    ids=["small-photos-enlarged", "own-shorter-side", "large-photos-capped", "grayscale-keeps-digits"],
)
def test_photos_train_at_their_own_size_within_bounds(tmp_path, shape, size, caplog, capsys):
    """Photos larger than 32x32 are not shrunk to the dev photos' size: the recipe follows the data
    set, `data import` says so, the size is saved in config.yaml, and --set or a config file wins."""
    data = import_photos(tmp_path, shape)
    assert f"at {size}x{size} pixels" in capsys.readouterr().out
    with caplog.at_level("INFO"):
        cfg = open_run(str(tmp_path / "run"), str(data)).cfg
    assert cfg.data.image_size == size
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["image_size"] == size
    if max(shape[:2]) > size:  # the user is told the size their images train at
        assert f"train at {size}x{size}" in caplog.text
    assert ("on a CPU" in caplog.text) is (size > 64)  # and what a large size costs on a CPU
    caplog.clear()  # `selftrain run` opens the run quietly: its flow says it, in the flow run's logs
    with caplog.at_level("INFO"):
        open_run(str(tmp_path / "quiet"), str(data), announce=False)
    assert "data.image_size" not in caplog.text
    assert RunStore(tmp_path / "set").open(data, None, ["data.image_size=40"]).data.image_size == 40
    pinned = RunStore(tmp_path / "file").open(data, str(ROOT / "configs" / "photos.yaml"), [])
    assert pinned.data.image_size == 32


def test_unknown_recipe_is_one_line(tmp_path):
    with pytest.raises(SelftrainError, match="recipe: Input should be 'digits' or 'photos'"):
        load_config(None, ["recipe=sketches"])


@pytest.mark.parametrize("name", ["digits", "photos"])
def test_shipped_config_file_is_the_recipe(name):
    """configs/<recipe>.yaml documents each recipe in full; it must not drift from the code."""
    assert load_config(ROOT / "configs" / f"{name}.yaml") == load_config(None, recipe=name)


@pytest.mark.parametrize(
    ("overrides", "grows"),
    [([], False), (["student.models=[resnet18t,resnet26t_basic,resnet34t]"], True)],
    ids=["default-equal-size", "documented-growing-ladder"],
)
def test_photo_students_are_never_smaller_than_their_teacher(overrides, grows):
    """Noisy Student's student is equal or larger than its teacher, iteration after iteration; the
    growing ladder the recipe documents for GPUs is a valid override and grows in parameters."""
    cfg = load_config(None, overrides, recipe="photos")
    names = [cfg.teacher.model, *(cfg.student.for_iteration(cfg.student.models, k) for k in (1, 2, 3))]
    params = [count_parameters(build_model(n, num_classes=10, in_chans=3)) for n in names]
    assert all(b >= a for a, b in itertools.pairwise(params)), dict(zip(names, params, strict=True))
    assert (params[-1] > params[0]) is grows


def test_pad_crop_shifts_within_the_padding():
    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3) % 251)
    crop = RandomPadCrop(32, 0.125)
    augment_rng.seed(0)
    outs = [np.asarray(crop(image)) for _ in range(20)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    src = np.asarray(image)
    padded = np.pad(src, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    for o in outs:  # every output is some 32x32 window of the reflect-padded image
        assert any(np.array_equal(o, padded[y : y + 32, x : x + 32]) for y in range(9) for x in range(9))
    assert len({o.tobytes() for o in outs}) > 5


def test_photo_mpl_student_is_larger_than_its_teacher():
    """The photo recipe's MPL student is a deeper copy of the teacher (measured to pay on photos)
    and still starts from the supervised teacher's weights."""
    cfg = load_config(None, recipe="photos")
    teacher, student = (
        count_parameters(build_model(n, num_classes=10, in_chans=3))
        for n in (cfg.mpl.teacher_model, cfg.mpl.student_model)
    )
    assert student > teacher
    assert cfg.mpl.init_student_from_supervised
