import json

import numpy as np
from sklearn.datasets import load_digits

from commands.cli import main
from selftrain.data.dataset_info import load_dataset
from selftrain.data.shards import decode_sample, iter_shard


def _keys_and_labels(ds, split):
    out = []
    for e in ds.split(split).shards:
        for raw in iter_shard(ds.shard_path(e), e):
            d = decode_sample(raw, channels=1, num_classes=10, labeled=ds.split(split).labeled)
            out.append((d.key, d.label))
    return out


def test_splits_are_disjoint_cover_everything_and_stratified(digits_master):
    ds = load_dataset(digits_master)
    keys = {s: [k for k, _ in _keys_and_labels(ds, s)] for s in ("labeled", "unlabeled", "val", "test")}
    all_keys = [k for ks in keys.values() for k in ks]
    assert len(all_keys) == len(set(all_keys)) == 1797

    labeled = _keys_and_labels(ds, "labeled")
    assert np.bincount([y for _, y in labeled], minlength=10).tolist() == [5] * 10
    target = load_digits().target
    overall = np.bincount(target, minlength=10) / len(target)
    for split, share in (("test", 0.2), ("val", 0.1)):
        counts = np.bincount([y for _, y in _keys_and_labels(ds, split)], minlength=10)
        assert abs(counts.sum() - share * 1797) <= 10
        assert np.abs(counts / counts.sum() - overall).max() < 0.02, split  # stratified
        assert ds.split(split).counts == {str(c): int(n) for c, n in enumerate(counts)}


def test_unlabeled_truth_is_separate_and_correct(digits_master):
    ds = load_dataset(digits_master)
    truth = ds.unlabeled_truth()
    unlabeled = _keys_and_labels(ds, "unlabeled")
    assert all(y is None for _, y in unlabeled)  # no label in the shards
    assert sorted(truth) == sorted(k for k, _ in unlabeled)
    target = load_digits().target
    assert all(target[int(k.split("_")[1])] == y for k, y in truth.items())


def test_images_are_the_real_digits(digits_master):
    ds = load_dataset(digits_master)
    e = ds.split("test").shards[0]
    raw = next(iter(iter_shard(ds.shard_path(e), e)))
    d = decode_sample(raw, channels=1, num_classes=10, labeled=True)
    i = int(d.key.split("_")[1])
    expected = np.round(load_digits().images[i] * 255 / 16).astype(np.uint8)
    assert np.array_equal(np.asarray(d.image), expected)


def test_cli_options_and_index(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "digits", "--out", str(out), "--labels-per-class", "3", "--seed", "4",
                 "--samples-per-shard", "100"]) == 0
    index = json.loads((out / "dataset.json").read_text())
    assert index["splits"]["labeled"]["shards"][0]["samples"] == 30
    assert all(len(s["sha256"]) == 64 for sp in index["splits"].values() for s in sp["shards"])
    assert max(s["samples"] for s in index["splits"]["unlabeled"]["shards"]) == 100
    assert index["image_size"] == [8, 8] and index["channels"] == 1
    assert main(["data", "digits", "--out", str(out)]) == 2  # refuses to overwrite
    assert "already there" in capsys.readouterr().err


def test_hand_written_index_over_existing_shards(digits_master, tmp_path):
    """Bring-your-own WebDataset: a minimal dataset.json (no sha256, no counts) next to the shards."""
    import shutil

    from selftrain.data.stream import SplitStream
    from selftrain.transforms import eval_transform

    own = tmp_path / "byo"
    own.mkdir()
    index = json.loads((digits_master / "dataset.json").read_text())
    splits = {}
    for name, split in index["splits"].items():
        for s in split["shards"]:
            shutil.copy(digits_master / s["path"], own / s["path"])
        splits[name] = {"labeled": split["labeled"],
                        "shards": [{"path": s["path"], "samples": s["samples"]} for s in split["shards"]]}
    (own / "dataset.json").write_text(json.dumps(
        {"classes": [str(i) for i in range(10)], "image_size": [8, 8], "channels": 1, "splits": splits}))
    ds = load_dataset(own)
    labels = [y for _, y in SplitStream(ds, "val", eval_transform(16, 1))]
    assert len(labels) == ds.split("val").total == 180


def test_a_build_killed_mid_shard_is_rebuilt_whole(tmp_path, digits_master):
    from selftrain.data.digits import build_digits

    out = tmp_path / "digits"
    out.mkdir()
    (out / ".labeled-000000.tar.x1y2.tmp").write_bytes(b"half a shard")  # what SIGKILL leaves
    (out / "labeled-000000.tar").write_bytes(b"an older shard")
    build_digits(out, labels_per_class=5, seed=0)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in digits_master.iterdir())
    assert (out / "dataset.json").read_bytes() == (digits_master / "dataset.json").read_bytes()
