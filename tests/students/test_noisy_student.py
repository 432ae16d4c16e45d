import json
import shutil

import pytest
import torch

from pseudolabel.label_shards import pseudo_dir
from pseudolabel.selection import read_selection
from selftrain.config import load_config
from selftrain.data.dataset_info import load_dataset
from selftrain.errors import SelftrainError
from selftrain.noise import noised_transform
from selftrain.runstore import RunStore
from students.noisy_student import noisy_student_step, train_student
from students.pseudo_stream import PseudoLabeledStream
from tests.conftest import QUICK_TEACHER
from tests.students.conftest import QUICK_STUDENT


def _train(run, *overrides):
    store = RunStore(run)
    cfg = load_config(None, [*QUICK_TEACHER, *QUICK_STUDENT, *overrides])
    return train_student(store, load_dataset(store.data_dir()), cfg, torch.device("cpu"), 1)


def test_every_step_takes_b_labeled_and_r_times_b_pseudo_labeled(run_copy):
    card = _train(run_copy)
    assert (card["labeled_batch"], card["unlabeled_batch"], card["unlabeled_ratio"]) == (4, 12, 3)
    for row in card["loss_curve"]:
        assert row["labeled_samples"] == 4 and row["pseudo_samples"] == 12
    assert card["role"] == "student" and card["teacher_iteration"] == 0
    assert card["pseudo_label_accuracy"] is not None


def test_teacher_and_student_write_tensorboard_scalars(run_copy):
    from selftrain.tblog import read_scalars, stage_log, tb_dir

    teacher = read_scalars(tb_dir(run_copy, 0, "teacher"))  # the fixture's teacher (30 steps)
    assert [s for s, _ in teacher["train/loss"]] == list(range(1, 31))
    assert len(teacher["lr/model"]) == 30 and teacher["lr/model"][0][1] < teacher["lr/model"][4][1]  # warm-up
    assert all(v > 0 for _, v in teacher["throughput/samples_per_s"])
    assert [v for _, v in teacher["val/accuracy"]] == pytest.approx(
        [r["val_accuracy"] for r in RunStore(run_copy).card(0)["loss_curve"]]
    )

    card = _train(run_copy)
    student = read_scalars(tb_dir(run_copy, 1, "student"))
    assert [s for s, _ in student["val/accuracy"]] == [6, 12]
    assert [v for _, v in student["pseudo/share_of_batch"]] == pytest.approx([12 / 16] * 12)
    stats = read_selection(RunStore(run_copy), 0)["stats"]
    ((_, kept),) = student["pseudo/filter_kept_fraction"]
    assert kept == pytest.approx(stats["confident"] / stats["images"])
    losses = [v for _, v in student["train/loss"]]  # one value per step; the card keeps their means
    assert len(losses) == 12
    assert [sum(losses[:6]) / 6, sum(losses[6:]) / 6] == pytest.approx(
        [r["loss"] for r in card["loss_curve"]], rel=1e-5
    )

    off = load_config(None, ["tensorboard.enabled=false"])
    assert stage_log(off, run_copy, 1, "student", 16) is None


def test_ratio_schedule_is_per_iteration():
    cfg = load_config(None, ["student.unlabeled_ratio=[14, 28]"])
    assert [cfg.student.for_iteration(cfg.student.unlabeled_ratio, k) for k in (1, 2, 3, 7)] == [
        14,
        28,
        28,
        28,
    ]


def test_pseudo_stream_repeats_images_as_the_selection_says(labeled_run):
    store = RunStore(labeled_run)
    copies = {k: int(v) for k, v in read_selection(store, 0)["copies"].items()}
    dataset = load_dataset(store.data_dir())
    stream = PseudoLabeledStream(
        dataset,
        lambda img: torch.zeros(1),
        pseudo_dir=pseudo_dir(store, 0),
        copies=copies,
        seed=0,
    )
    for seen, (_, target) in enumerate(stream, start=1):
        assert target.shape == (10,) and abs(float(target.sum()) - 1) < 1e-3
        if seen == stream.epoch_size:
            break
    assert stream.epoch_size == sum(copies.values())


def test_pseudo_targets_are_the_stored_soft_labels_or_one_hot_argmaxes(labeled_run):
    from pseudolabel.sidecar import read_sidecar, sidecar_path

    store = RunStore(labeled_run)
    copies = {k: int(v) for k, v in read_selection(store, 0)["copies"].items()}
    dataset = load_dataset(store.data_dir())
    entry = dataset.split("unlabeled").shards[0]
    labels = read_sidecar(sidecar_path(pseudo_dir(store, 0), entry.path), 10)
    row = {k: j for j, k in enumerate(labels.keys)}
    streams = {
        hard: PseudoLabeledStream(
            dataset, lambda img: img, pseudo_dir=pseudo_dir(store, 0), copies=copies, hard=hard
        )
        for hard in (False, True)
    }
    soft, hard = streams[False]._targets(0), streams[True]._targets(0)
    assert set(soft) == set(hard) == {k for k in labels.keys if copies.get(k, 0)}
    for key in soft:
        j = row[key]
        assert torch.equal(soft[key], torch.from_numpy(labels.prob[j].astype("float32")))
        assert hard[key].argmax() == int(labels.cls[j]) and hard[key].sum() == 1 and hard[key].max() == 1
    assert any(float(t.max()) < 1 for t in soft.values())  # the soft targets are not one-hot


def test_noise_is_random_for_the_student_and_absent_for_teacher_inference():
    from PIL import Image

    from selftrain.config import AugmentConfig
    from selftrain.transforms import eval_transform

    img = Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L")
    noisy = noised_transform(32, 1, AugmentConfig(), magnitude=9, num_ops=2)
    assert not torch.equal(noisy(img), noisy(img))
    clean = eval_transform(32, 1)
    assert torch.equal(clean(img), clean(img))


def test_student_smaller_than_teacher_is_refused(run_copy):
    with pytest.raises(SelftrainError, match="smaller than its teacher"):
        _train(run_copy, "student.models=[effnet_ladder_0]")


def test_step_returns_loss_parts_and_updates_ema():
    from timm.utils import ModelEmaV3

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ema = ModelEmaV3(model, decay=0.5)
    before = [p.clone() for p in ema.module.parameters()]
    out = noisy_student_step(
        model,
        opt,
        sched,
        (torch.randn(2, 4), torch.tensor([0, 1])),
        (torch.randn(6, 4), torch.softmax(torch.randn(6, 3), 1)),
        label_smoothing=0.0,
        pseudo_weight=1.0,
        device=torch.device("cpu"),
        ema=ema,
    )
    assert out["loss"] == pytest.approx(out["loss_labeled"] + out["loss_pseudo"], rel=1e-5)
    assert (out["labeled_samples"], out["pseudo_samples"]) == (2, 6)
    assert any(not torch.equal(a, b) for a, b in zip(before, ema.module.parameters(), strict=True))


def test_ratio_zero_trains_on_labeled_data_alone():
    """unlabeled_ratio 0 (an ablation): an empty pseudo-labeled batch adds nothing, not NaN."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    out = noisy_student_step(
        model,
        opt,
        sched,
        (torch.randn(2, 4), torch.tensor([0, 1])),
        (torch.randn(0, 4), torch.zeros(0, 3)),
        label_smoothing=0.0,
        pseudo_weight=1.0,
        device=torch.device("cpu"),
    )
    assert out["loss_pseudo"] == 0.0 and out["loss"] == pytest.approx(out["loss_labeled"])
    assert out["pseudo_samples"] == 0 and all(torch.isfinite(p).all() for p in model.parameters())


def _step(mix=None, smoothing=0.1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    gen = torch.Generator().manual_seed(1)
    labeled = (torch.randn(2, 4, generator=gen), torch.tensor([0, 2]))
    pseudo = (torch.randn(6, 4, generator=gen), torch.softmax(torch.randn(6, 3, generator=gen), 1))
    out = noisy_student_step(
        model, opt, sched, labeled, pseudo, label_smoothing=smoothing, pseudo_weight=1.0,
        device=torch.device("cpu"), mix=mix,
    )  # fmt: skip
    return out, [p.detach().clone() for p in model.parameters()]


def test_student_mixing_mixes_labeled_and_pseudo_parts_apart_with_smoothed_targets():
    seen = {}

    def unmixed(x, target, *, part):  # records what each part hands over, mixes nothing
        seen[part] = (len(x), target.clone())
        return x, target

    plain, plain_weights = _step()
    out, weights = _step(unmixed)
    assert seen[0][0] == 2 and seen[1][0] == 6  # labeled and pseudo-labeled batches, never blended
    assert torch.allclose(seen[0][1][0], torch.tensor([0.1 / 3 + 0.9, 0.1 / 3, 0.1 / 3]))
    # Soft targets of smoothed one-hots are the same loss as the hard path: mixing off is unchanged.
    assert out["loss_labeled"] == pytest.approx(plain["loss_labeled"], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(plain_weights, weights, strict=True))


def test_mixed_students_repeat_bit_for_bit_and_differ_from_unmixed(labeled_run, tmp_path):
    from safetensors.torch import load_file

    mixing = ["student.mixup_alpha=0.8", "student.cutmix_alpha=1.0"]
    weights = {}
    for name, extra in {"mix-a": mixing, "mix-b": mixing, "plain": []}.items():
        run = tmp_path / name
        shutil.copytree(labeled_run, run)
        _train(run, *extra)
        weights[name] = load_file(run / "iter-001" / "model.safetensors")
    assert all(torch.equal(weights["mix-a"][k], weights["mix-b"][k]) for k in weights["plain"])
    assert any(not torch.equal(weights["mix-a"][k], weights["plain"][k]) for k in weights["plain"])


def test_status_json_has_noisy_student_fields(run_copy, capsys):
    from commands.cli import main

    _train(run_copy)
    assert main(["status", "--run-dir", str(run_copy), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["iterations"]
    assert [r["role"] for r in rows] == ["teacher", "student"]
    assert rows[1]["unlabeled_ratio"] == 3 and 0 <= rows[1]["pseudo_label_accuracy"] <= 1
    assert "pseudo_label_accuracy" in rows[0] and "unlabeled_ratio" in rows[0]
