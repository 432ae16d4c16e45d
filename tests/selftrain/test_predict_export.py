"""`selftrain predict` and `selftrain export` on a quickly trained digits teacher."""

from __future__ import annotations

import csv
import json
import tarfile

import numpy as np
import pytest
import torch

from commands.cli import main
from selftrain.data.dataset_info import load_dataset
from selftrain.data.stream import SplitStream
from selftrain.runstore import RunStore
from selftrain.saved_model import default_iteration, load_saved_model
from selftrain.transforms import eval_transform
from tests.conftest import QUICK_TEACHER


@pytest.fixture(scope="module")
def teacher_run(digits_master, tmp_path_factory):
    from teachers.supervised import train_teacher

    root = tmp_path_factory.mktemp("predict") / "run"
    store = RunStore(root)
    cfg = store.open(digits_master, None, QUICK_TEACHER)
    train_teacher(store, load_dataset(digits_master), cfg, torch.device("cpu"))
    return root


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_on_the_test_split_are_what_eval_scores(teacher_run, digits_master, tmp_path, capsys):
    out = tmp_path / "test.jsonl"
    assert main(["predict", "--run-dir", str(teacher_run), "--split", "test", "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 360 and all(r["status"] == "ok" and len(r["top_k"]) == 5 for r in rows)
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(teacher_run), "--iteration", "0", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    hits = sum(r["top_k"][0]["class"] == r["label"] for r in rows)
    assert hits / len(rows) == scored["top1"]

    # Image by image: the probabilities of the model on the evaluation stream itself.
    saved = load_saved_model(RunStore(teacher_run), 0, torch.device("cpu"))
    dataset = load_dataset(digits_master)
    stream = SplitStream(dataset, "test", eval_transform(saved.image_size, 1), with_keys=True)
    by_key = {r["key"]: r for r in rows}
    for x, key in list(stream)[:40]:
        probs = torch.softmax(saved.model(x[None]), dim=1)[0]
        top = by_key[key]["top_k"]
        assert int(probs.argmax()) == int(top[0]["class"])
        assert [p["probability"] for p in top] == pytest.approx(
            probs.sort(descending=True).values[:5].tolist(), abs=1e-5
        )
        assert sum(p["probability"] for p in top) <= 1 + 1e-6


def _extract_pngs(digits_master, folder, n):
    """The first `n` test images as PNG files (the bytes the shards hold), named by key."""
    folder.mkdir(parents=True)
    with tarfile.open(digits_master / "test-000000.tar") as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".png")][:n]
        for m in members:
            (folder / m.name).write_bytes(tar.extractfile(m).read())
    return [m.name[: -len(".png")] for m in members]


def test_images_folder_csv_and_corrupt_files(teacher_run, digits_master, tmp_path, capsys):
    images = tmp_path / "images"
    keys = _extract_pngs(digits_master, images / "nested", 6)
    (images / "broken.png").write_bytes(b"not a png")
    (images / "README.txt").write_text("not an image: ignored")
    out = tmp_path / "p.csv"
    args = [
        "predict",
        "--run-dir",
        str(teacher_run),
        "--images",
        str(images),
        "--out",
        str(out),
        "--top-k",
        "3",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: ")
        and "broken.png" in err[0]
        and "--skip-corrupt" in err[0]
    )
    assert not out.exists()  # nothing half-written

    assert main([*args, "--skip-corrupt"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("broken.png") and skipped[0]["class_1"] == ""

    # A file holding a test image gets the prediction its shard sample gets.
    split_out = tmp_path / "test.jsonl"
    assert main(["predict", "--run-dir", str(teacher_run), "--split", "test", "--out", str(split_out)]) == 0
    by_key = {r["key"]: r["top_k"] for r in _rows(split_out)}
    for r in rows:
        if r["status"] == "ok":
            key = r["path"].rsplit("/", 1)[-1][: -len(".png")]
            assert key in keys
            assert r["class_1"] == by_key[key][0]["class"]
            assert float(r["probability_1"]) == pytest.approx(by_key[key][0]["probability"], abs=1e-5)


def test_bad_output_name_and_default_iteration(teacher_run, tmp_path, capsys):
    assert (
        main(["predict", "--run-dir", str(teacher_run), "--split", "val", "--out", str(tmp_path / "p.txt")])
        == 2
    )
    assert ".jsonl or .csv" in capsys.readouterr().err
    store = RunStore(teacher_run)
    assert default_iteration(store) == 0
    manifest = store.manifest()
    assert "teacher_iteration" not in manifest  # a teacher-only run: its teacher is iteration 0


def _real_batch(digits_master, n, side):
    stream = SplitStream(load_dataset(digits_master), "test", eval_transform(side, 1))
    return torch.stack([x for x, _ in list(stream)[:n]])


def test_onnx_export_matches_pytorch_on_real_images(teacher_run, digits_master, tmp_path):
    import onnxruntime

    out = tmp_path / "teacher.onnx"
    assert main(["export", "--run-dir", str(teacher_run), "--format", "onnx", "--out", str(out)]) == 0
    card = json.loads((tmp_path / "teacher.onnx.json").read_text())
    pre = card["preprocessing"]
    # the run's data.image_size (QUICK_TEACHER: 16)
    assert pre["input_size"] == [1, 16, 16] and pre["mean"] == [0.5] and pre["std"] == [0.5]
    assert pre["classes"] == [str(i) for i in range(10)] and card["export"]["format"] == "onnx"

    saved = load_saved_model(RunStore(teacher_run), 0, torch.device("cpu"))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = _real_batch(digits_master, 40, saved.image_size)
    for n in (1, 7, 40):  # the batch axis is dynamic
        (got,) = session.run(["logits"], {"input": images[:n].numpy()})
        with torch.no_grad():
            want = saved.model(images[:n]).numpy()
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_torchscript_export_matches_pytorch(teacher_run, digits_master, tmp_path):
    out = tmp_path / "teacher.pt"
    assert main(["export", "--run-dir", str(teacher_run), "--format", "torchscript", "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out))
    saved = load_saved_model(RunStore(teacher_run), 0, torch.device("cpu"))
    images = _real_batch(digits_master, 12, saved.image_size)
    with torch.no_grad():
        for n in (1, 5, 12):
            np.testing.assert_allclose(
                loaded(images[:n]).numpy(), saved.model(images[:n]).numpy(), atol=1e-4, rtol=0
            )
    assert json.loads((tmp_path / "teacher.pt.json").read_text())["export"]["sha256"]


def test_a_camera_rotated_image_is_predicted_upright(teacher_run, digits_master, tmp_path):
    """A photo stored sideways with an EXIF tag saying how to turn it is predicted as a person sees
    it (and as `data import` stores such photos): the same as its upright shard sample."""
    from PIL import Image

    images = tmp_path / "images"
    keys = _extract_pngs(digits_master, images, 8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    for key in keys:
        path = images / f"{key}.png"
        sideways = Image.open(path).transpose(Image.Transpose.ROTATE_90)
        sideways.save(path, exif=exif)
    out, split_out = tmp_path / "p.jsonl", tmp_path / "test.jsonl"
    assert main(["predict", "--run-dir", str(teacher_run), "--images", str(images), "--out", str(out)]) == 0
    assert main(["predict", "--run-dir", str(teacher_run), "--split", "test", "--out", str(split_out)]) == 0
    by_key = {r["key"]: r["top_k"] for r in _rows(split_out)}
    for row in _rows(out):
        key = row["path"].rsplit("/", 1)[-1][: -len(".png")]
        assert [p["class"] for p in row["top_k"]] == [p["class"] for p in by_key[key]]
        assert row["top_k"][0]["probability"] == pytest.approx(by_key[key][0]["probability"], abs=1e-5)
