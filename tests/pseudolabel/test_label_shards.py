"""Teacher inference into sidecars on real digits shards: values, modes, reuse, shard subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pseudolabel.label_shards import LabelSpec, label_shards, pseudo_dir, resolve_shards
from pseudolabel.shard_batches import split_eval_transform, stack_pixels
from pseudolabel.sidecar import meta_path, read_meta, read_sidecar, sidecar_path
from pseudolabel.teacher_model import load_teacher
from selftrain.data.dataset_info import load_dataset
from selftrain.data.shards import decode_sample, iter_shard
from selftrain.errors import SelftrainError
from selftrain.transforms import Resize, eval_transform
from tests.helpers import teacher_outputs

CPU = torch.device("cpu")


def _label(store, shards=None, **kw):
    dataset = load_dataset(store.data_dir())
    return label_shards(store, dataset, 0, shards, store.config(), CPU, **kw)


def _all_labels(store):
    dataset = load_dataset(store.data_dir())
    out = pseudo_dir(store, 0)
    parts = [read_sidecar(sidecar_path(out, e.path), 10) for e in dataset.split("unlabeled").shards]
    return parts


def test_soft_labels_sum_to_one_and_equal_the_teacher(run):
    result = _label(run)
    assert result.spec.mode == "soft" and result.labeled_images == 1207
    expected = teacher_outputs(run)
    labels = _all_labels(run)
    keys = [k for part in labels for k in part.keys]
    assert sorted(keys) == sorted(expected)  # every image, once, under its own __key__
    prob = np.concatenate([p.prob for p in labels]).astype(np.float32)
    cls = np.concatenate([p.cls for p in labels])
    conf = np.concatenate([p.conf for p in labels])
    want = np.stack([expected[k] for k in keys])
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=5e-3)
    np.testing.assert_allclose(prob, want, atol=1e-3)  # float16 storage
    np.testing.assert_allclose(conf, want.max(1), atol=1e-4)
    close = np.sort(want, 1)[:, -1] - np.sort(want, 1)[:, -2] > 1e-4  # not a near-tie
    np.testing.assert_array_equal(cls[close], want.argmax(1)[close])


def test_temperature_softens(make_run):
    store = make_run(temperature=3.0)
    _label(store, [0])
    expected = teacher_outputs(store, temperature=3.0)
    part = read_sidecar(sidecar_path(pseudo_dir(store, 0), "unlabeled-000000.tar"), 10)
    want = np.stack([expected[k] for k in part.keys])
    np.testing.assert_allclose(part.prob.astype(np.float32), want, atol=1e-3)


def test_hflip_average_labels_with_the_mean_of_the_image_and_its_mirror(make_run, set_pseudolabel_config):
    store = make_run(hflip_average=True)
    _label(store, [0])
    plain, mirrored = teacher_outputs(store), teacher_outputs(store, mirror=True)
    part = read_sidecar(sidecar_path(pseudo_dir(store, 0), "unlabeled-000000.tar"), 10)
    want = np.stack([(plain[k] + mirrored[k]) / 2 for k in part.keys])
    assert np.abs(want - np.stack([plain[k] for k in part.keys])).max() > 0.05  # the mirror changes labels
    np.testing.assert_allclose(part.prob.astype(np.float32), want, atol=1e-3)
    # A sidecar records how it was made: turning the average off labels the shard again.
    set_pseudolabel_config(store, hflip_average=False)
    again = _label(store, [0])
    assert {s.status for s in again.shards} == {"labeled"}
    part = read_sidecar(sidecar_path(pseudo_dir(store, 0), "unlabeled-000000.tar"), 10)
    np.testing.assert_allclose(
        part.prob.astype(np.float32), np.stack([plain[k] for k in part.keys]), atol=1e-3
    )


def test_hard_labels_are_one_hot_of_the_argmax(make_run):
    soft, hard = make_run("soft"), make_run("hard", mode="hard")
    _label(soft, [1])
    _label(hard, [1])
    s = read_sidecar(sidecar_path(pseudo_dir(soft, 0), "unlabeled-000001.tar"), 10)
    h = read_sidecar(sidecar_path(pseudo_dir(hard, 0), "unlabeled-000001.tar"), 10)
    assert h.mode == "hard" and h.prob is None and h.keys == s.keys
    np.testing.assert_array_equal(h.cls, s.cls)
    np.testing.assert_array_equal(h.conf, s.conf)
    np.testing.assert_array_equal(h.dense(), np.eye(10, dtype=np.float32)[s.cls])


def test_topk_keeps_the_k_most_probable(make_run):
    soft, topk = make_run("soft"), make_run("topk", mode="topk", top_k=3)
    _label(soft, [2])
    _label(topk, [2])
    s = read_sidecar(sidecar_path(pseudo_dir(soft, 0), "unlabeled-000002.tar"), 10)
    t = read_sidecar(sidecar_path(pseudo_dir(topk, 0), "unlabeled-000002.tar"), 10)
    assert t.mode == "topk" and t.idx.shape == (len(s), 3) and t.prob.shape == (len(s), 3)
    sp = s.prob.astype(np.float32)
    np.testing.assert_allclose(
        np.take_along_axis(sp, t.idx.astype(np.int64), 1), t.prob.astype(np.float32), atol=1e-3
    )
    np.testing.assert_array_equal(t.idx[:, 0], t.cls)
    assert (np.diff(t.prob.astype(np.float32), axis=1) <= 0).all()  # descending


def test_auto_mode_switches_to_topk_above_100_classes(run):
    cfg = run.config().pseudolabel
    card = {"weights_sha256": "x", "input_size": [1, 16, 16]}
    assert LabelSpec.from_card({**card, "num_classes": 100}, cfg).mode == "soft"
    big = LabelSpec.from_card({**card, "num_classes": 1000}, cfg)
    assert (big.mode, big.top_k) == ("topk", cfg.top_k)
    hard = LabelSpec.from_card({**card, "num_classes": 1000}, cfg.model_copy(update={"mode": "hard"}))
    assert (hard.mode, hard.top_k) == ("hard", None)


def test_split_transform_equals_eval_transform(digits_shards):
    dataset = load_dataset(digits_shards)
    entry = dataset.split("unlabeled").shards[0]
    digits = [
        decode_sample(raw, channels=1, num_classes=10, labeled=False).image
        for raw, _ in zip(iter_shard(dataset.shard_path(entry), entry), range(20), strict=False)
    ]
    rng = np.random.default_rng(0)
    gray64 = [Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L") for _ in range(5)]
    rgb = [Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), mode="RGB") for _ in range(5)]
    for images, size, channels in ((digits, 16, 1), (gray64, 32, 1), (rgb, 16, 3), (gray64, 64, 1)):
        per_image, per_batch = split_eval_transform(size, channels)
        full = eval_transform(size, channels)
        batch = per_batch(torch.stack([per_image(im) for im in images]))
        assert torch.equal(batch, torch.stack([full(im) for im in images])), (size, channels)
        # The labeler's batches: each resized image's raw pixels, one tensor per batch.
        pixels = stack_pixels([Resize(size)(im).tobytes() for im in images], size, channels)
        assert pixels.is_contiguous() and pixels.dtype == torch.uint8
        assert torch.equal(per_batch(pixels), batch), (size, channels)


def test_rerun_reuses_complete_sidecars_and_relabels_changed_ones(run, set_pseudolabel_config, sidecar_files):
    _label(run)
    before = sidecar_files(pseudo_dir(run, 0))
    again = _label(run)
    assert {s.status for s in again.shards} == {"reused"} and again.labeled_images == 0
    assert sidecar_files(pseudo_dir(run, 0)) == before

    meta_path(pseudo_dir(run, 0), "unlabeled-000004.tar").unlink()  # killed between archive and record
    third = _label(run)
    assert [s.shard for s in third.shards if s.status == "labeled"] == ["unlabeled-000004.tar"]
    assert sidecar_files(pseudo_dir(run, 0)) == before  # same teacher, same images: same bytes

    set_pseudolabel_config(run, temperature=2.0)
    fourth = _label(run, [0, 1])
    assert {s.status for s in fourth.shards} == {"labeled"}
    assert read_meta(meta_path(pseudo_dir(run, 0), "unlabeled-000000.tar"))["temperature"] == 2.0


def test_new_teacher_weights_relabel(run, save_teacher):
    _label(run, [0])
    old = read_meta(meta_path(pseudo_dir(run, 0), "unlabeled-000000.tar"))
    save_teacher(run, load_dataset(run.data_dir()), seed=1)  # iteration 0 retrained: other weights
    result = _label(run, [0])
    new = read_meta(meta_path(pseudo_dir(run, 0), "unlabeled-000000.tar"))
    assert result.shards[0].status == "labeled"
    assert new["teacher_weights_sha256"] != old["teacher_weights_sha256"]
    assert new["sidecar_sha256"] != old["sidecar_sha256"]


def test_only_the_given_shards_are_labeled(run):
    result = _label(run, [3, 1])
    assert [s.shard for s in result.shards] == ["unlabeled-000003.tar", "unlabeled-000001.tar"]
    written = sorted(p.name for p in pseudo_dir(run, 0).glob("*.labels.json"))
    assert written == ["unlabeled-000001.labels.json", "unlabeled-000003.labels.json"]


def test_workers_give_the_same_sidecars(make_run, sidecar_files):
    a, b = make_run("a"), make_run("b")
    _label(a, [0, 1, 2], num_workers=0)
    _label(b, [0, 1, 2], num_workers=2)
    assert sidecar_files(pseudo_dir(a, 0)) == sidecar_files(pseudo_dir(b, 0))


def test_resolve_shards_by_index_and_name(digits_shards):
    dataset = load_dataset(digits_shards)
    assert resolve_shards(dataset, None) is None
    assert resolve_shards(dataset, ["2", "unlabeled-000004", "unlabeled-000001.tar,2"]) == [2, 4, 1]
    with pytest.raises(SelftrainError, match="--shards 'unlabeled-000099': no unlabeled shard"):
        resolve_shards(dataset, ["unlabeled-000099"])


def test_teacher_is_frozen_in_eval_mode(run):
    teacher = load_teacher(run, 0, load_dataset(run.data_dir()), CPU)
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.image_size == 16 and teacher.weights_sha256 == run.card(0)["weights_sha256"]
