import pytest
from PIL import Image

from selftrain.cli import main
from selftrain.data.dataset_info import load_dataset
from selftrain.data.shards import decode_sample, iter_shard
from selftrain.data.stream import SplitStream
from selftrain.transforms import eval_transform


@pytest.fixture
def tree(tmp_path):
    """cats/dogs in mixed formats, modes and sizes; unlabeled nested and flat."""
    root = tmp_path / "src"
    formats = [("png", "RGB"), ("jpg", "RGB"), ("bmp", "L"), ("gif", "P")]
    for split, n in (("train", 6), ("test", 2)):
        for c, name in enumerate(["cat", "dog"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                ext, mode = formats[i % len(formats)]
                Image.new(mode, (20 + i, 30), (c * 100 + i) if mode != "RGB" else (c * 100, i, 0)).save(d / f"{i}.{ext}")
    un = root / "unlabeled"
    (un / "batch1").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (16, 16), (i, i, i)).save((un if i % 2 else un / "batch1") / f"u{i}.png")
    return root


def test_import_imagefolder(tree, tmp_path):
    out = tmp_path / "ds"
    rc = main(["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
               "--test", str(tree / "test"), "--val-fraction", "0.34", "--out", str(out), "--samples-per-shard", "4"])
    assert rc == 0
    ds = load_dataset(out)
    info = ds.info
    assert info.classes == ["cat", "dog"] and info.channels == 3
    assert ds.split("val").counts == {"cat": 2, "dog": 2}
    assert ds.split("labeled").counts == {"cat": 4, "dog": 4}
    assert ds.split("test").total == 4 and ds.split("unlabeled").total == 5
    seen = set()
    for split in ("labeled", "val"):
        for e in ds.split(split).shards:
            for raw in iter_shard(ds.shard_path(e), e):
                d = decode_sample(raw, channels=3, num_classes=2, labeled=True)
                seen.add(d.key)
                assert d.image.mode == "RGB" and d.image.size[1] == 30  # size kept in the shard
    assert len(seen) == 12
    # resized in the transform, not in the shards
    x, key = next(iter(SplitStream(ds, "unlabeled", eval_transform(24, 3), with_keys=True)))
    assert tuple(x.shape) == (3, 24, 24) and "." not in key


def test_test_class_unknown_to_labeled_is_refused(tree, tmp_path, capsys):
    (tree / "test" / "bird").mkdir()
    rc = main(["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
               "--test", str(tree / "test"), "--out", str(tmp_path / "ds")])
    assert rc == 2
    assert "['bird'] are not in --labeled" in capsys.readouterr().err


def test_unreadable_file_is_named_or_skipped(tree, tmp_path, capsys):
    (tree / "train" / "cat" / "notes.txt").write_text("not an image")
    args = ["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
            "--test", str(tree / "test")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "notes.txt: not an image PIL can read" in capsys.readouterr().err
    assert not (tmp_path / "a" / "dataset.json").exists()
    assert main([*args, "--out", str(tmp_path / "b"), "--skip-corrupt"]) == 0
    ds = load_dataset(tmp_path / "b")
    assert ds.split("labeled").total + ds.split("val").total == 12


def test_jpeg_photos_stay_jpeg_byte_for_byte(tree, tmp_path):
    """Batched GPU decoding needs the JPEGs themselves: import must not re-encode them."""
    out = tmp_path / "ds"
    rc = main(["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
               "--test", str(tree / "test"), "--out", str(out)])
    assert rc == 0
    originals = {p.read_bytes() for p in (tree / "train").rglob("*.jpg")}
    ds = load_dataset(out)
    stored = [raw["jpg"] for split in ("labeled", "val") for e in ds.split(split).shards
              for raw in iter_shard(ds.shard_path(e), e) if "jpg" in raw]
    assert len(originals) == 4 and set(stored) == originals
