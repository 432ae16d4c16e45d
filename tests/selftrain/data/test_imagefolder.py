import numpy as np
import pytest
from PIL import Image

from commands.cli import main
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
    assert ds.split("labeled").total == 12  # 12 labels: no val by default (auto)


def _truth_tree(root):
    """labeled/test/unlabeled, each with cat and dog folders of distinct coloured images."""
    for split, n in (("train", 4), ("test", 2), ("unlabeled", 3)):
        for c, name in enumerate(["cat", "dog"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 12), (c * 120, i * 40, 7)).save(d / f"{i}.png")
    return root


def _import(root, out, *extra):
    return main(["data", "import", "--labeled", str(root / "train"), "--unlabeled", str(root / "unlabeled"),
                 "--test", str(root / "test"), "--val-fraction", "0.25", "--out", str(out), *extra])


def test_unlabeled_truth_is_report_only(tmp_path):
    """The flag records the unlabeled class folders for reports; the shards training reads are the same."""
    root = _truth_tree(tmp_path / "src")
    assert _import(root, tmp_path / "plain") == 0
    assert _import(root, tmp_path / "truth", "--unlabeled-truth") == 0
    plain, truth = load_dataset(tmp_path / "plain"), load_dataset(tmp_path / "truth")
    assert plain.unlabeled_truth() is None
    labels = truth.unlabeled_truth()
    assert len(labels) == 6 and sorted(labels.values()) == [0, 0, 0, 1, 1, 1]
    for key, label in labels.items():
        assert ("_cat_" in key) == (label == 0)
    # Training reads shards only: byte-identical with and without the flag, and carrying no label.
    for a, b in zip(plain.split("unlabeled").shards, truth.split("unlabeled").shards, strict=True):
        assert a.sha256 == b.sha256
        assert (plain.shard_path(a)).read_bytes() == (truth.shard_path(b)).read_bytes()
        assert all("cls" not in raw for raw in iter_shard(truth.shard_path(b), b))


def test_unlabeled_truth_rejects_unknown_class_and_loose_files(tmp_path, capsys):
    root = _truth_tree(tmp_path / "src")
    (root / "unlabeled" / "bird").mkdir()
    Image.new("RGB", (12, 12)).save(root / "unlabeled" / "bird" / "0.png")
    assert _import(root, tmp_path / "a", "--unlabeled-truth") == 2
    assert "class 'bird' is not in --labeled" in capsys.readouterr().err
    (root / "unlabeled" / "bird" / "0.png").rename(root / "unlabeled" / "loose.png")
    (root / "unlabeled" / "bird").rmdir()
    assert _import(root, tmp_path / "b", "--unlabeled-truth") == 2
    assert "every image must sit in a class folder" in capsys.readouterr().err


def test_jpeg_photos_stay_jpeg_byte_for_byte(tree, tmp_path):
    """Batched GPU decoding needs the JPEGs themselves: import must not re-encode them."""
    out = tmp_path / "ds"
    rc = main(["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
               "--test", str(tree / "test"), "--out", str(out)])
    assert rc == 0
    originals = {p.read_bytes() for p in (tree / "train").rglob("*.jpg")}
    ds = load_dataset(out)
    stored = [raw["jpg"] for e in ds.split("labeled").shards  # every label: 12 are too few for val
              for raw in iter_shard(ds.shard_path(e), e) if "jpg" in raw]
    assert len(originals) == 4 and set(stored) == originals


def test_val_fraction_auto_holds_out_val_only_when_it_can_choose():
    """Under 100 val images no stage chooses by val, so auto keeps every label for training."""
    from selftrain.data.imagefolder import auto_val_fraction

    assert auto_val_fraction(250) == 0.0  # 25 labels per class, 10 classes: 25 val images
    assert auto_val_fraction(994) == 0.0
    assert auto_val_fraction(1000) == 0.1  # 100 val images
    assert auto_val_fraction(5000) == 0.1


def test_val_fraction_must_be_a_share_or_auto(tree, tmp_path, capsys):
    args = ["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
            "--test", str(tree / "test"), "--out", str(tmp_path / "ds")]
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        main([*args, "--val-fraction", "ten"])
    assert "--val-fraction: expected a number or auto, got 'ten'" in capsys.readouterr().err
    assert main([*args, "--val-fraction", "1"]) == 2
    assert "--val-fraction: must be at least 0 and below 1 (got 1.0)" in capsys.readouterr().err
    assert main([*args, "--val-fraction", "auto"]) == 0
    assert load_dataset(tmp_path / "ds").count("val") == 0


def _shard_images(ds, split):
    """(key, encoded bytes, decoded image) of every sample of `split`."""
    out = []
    for e in ds.split(split).shards:
        for raw in iter_shard(ds.shard_path(e), e):
            ext = next(k for k in ("jpg", "png") if k in raw)
            d = decode_sample(raw, channels=ds.info.channels, num_classes=ds.info.num_classes, labeled=False)
            out.append((d.key, raw[ext], d.image))
    return out


def _small_labeled_tree(root, ext):
    """One small photo per class in train/ and test/, and an empty unlabeled/ for the test to fill."""
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 30), (200, 10, 10)).save(root / split / name / f"small.{ext}")
    (root / "unlabeled").mkdir()
    return root


def test_large_and_camera_rotated_photos_are_stored_small_and_upright(tmp_path, caplog):
    """A phone photo decoded whole on every draw would dominate a run, and one whose EXIF tag says
    "rotate" would train sideways: the import stores the first at --max-side (aspect kept) and the
    second upright; photos within the limit keep their bytes, and --max-side 0 keeps everything."""
    root = _small_labeled_tree(tmp_path / "src", "jpg")
    wide = Image.new("RGB", (1400, 600), (10, 200, 10))
    wide.paste((0, 0, 250), (0, 0, 700, 600))  # left half blue: downscaling must keep the layout
    wide.save(root / "unlabeled" / "wide.jpg", quality=95)
    tall = Image.new("RGB", (60, 20), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 30, 20))  # stored sideways: white half on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    tall.save(root / "unlabeled" / "rotated.jpg", exif=exif, quality=95)
    args = ["data", "import", "--labeled", str(root / "train"), "--unlabeled", str(root / "unlabeled"),
            "--test", str(root / "test")]

    with caplog.at_level("INFO"):
        assert main([*args, "--out", str(tmp_path / "ds")]) == 0
    ds = load_dataset(tmp_path / "ds")
    images = {key.split("_", 1)[1]: (data, image) for key, data, image in _shard_images(ds, "unlabeled")}
    data, image = images["wide"]
    assert image.size == (512, 219) and data[:2] == b"\xff\xd8"  # still a JPEG
    left, right = image.getpixel((100, 100)), image.getpixel((400, 100))
    assert left[2] > 200 > left[1] and right[1] > 150 > right[2]
    _, upright = images["rotated"]
    assert upright.size == (20, 60)  # portrait, as the camera's tag says
    assert upright.getpixel((10, 5))[0] > 200 and upright.getpixel((10, 55))[0] < 50
    assert "stored 1 images with a side over 512" in caplog.text and "1 images upright" in caplog.text
    small = (root / "train" / "cat" / "small.jpg").read_bytes()
    assert small in {data for _, data, _ in _shard_images(ds, "labeled")}  # untouched bytes

    assert main([*args, "--out", str(tmp_path / "orig"), "--max-side", "0"]) == 0
    kept = {key.split("_", 1)[1]: image for key, _, image in _shard_images(load_dataset(tmp_path / "orig"), "unlabeled")}
    assert kept["wide"].size == (1400, 600)


def test_max_side_must_be_zero_or_a_training_size(tree, tmp_path, capsys):
    rc = main(["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
               "--test", str(tree / "test"), "--out", str(tmp_path / "ds"), "--max-side", "8"])
    assert rc == 2
    assert "--max-side: 0 (keep every original) or at least 32 (got 8)" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_typical_size_of_photos_of_many_sizes_is_their_median(tmp_path):
    """A user's photos rarely share one size; the recipe's input size follows the typical one."""
    root = tmp_path / "src"
    sizes = [(300, 200), (320, 240), (640, 480), (500, 375), (96, 64), (400, 300)]
    for split in ("train", "test", "unlabeled"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i, size in enumerate(sizes):
                Image.new("RGB", size).save(root / split / name / f"{i}.png")
    assert main(["data", "import", "--labeled", str(root / "train"), "--unlabeled", str(root / "unlabeled"),
                 "--test", str(root / "test"), "--out", str(tmp_path / "ds")]) == 0
    assert list(load_dataset(tmp_path / "ds").info.image_size) == [270, 360]  # median height, width


def test_large_photos_in_modes_png_and_jpeg_cannot_store_still_import(tmp_path):
    """A print shop's CMYK JPEG or a float TIFF over --max-side is stored in the mode training
    decodes it to, rather than failing the import."""
    root = _small_labeled_tree(tmp_path / "src", "png")
    Image.new("CMYK", (900, 600), (0, 255, 255, 0)).save(root / "unlabeled" / "print.jpg")  # red in CMYK
    Image.new("F", (900, 600), 128.0).save(root / "unlabeled" / "scan.tif")
    assert main(["data", "import", "--labeled", str(root / "train"), "--unlabeled", str(root / "unlabeled"),
                 "--test", str(root / "test"), "--out", str(tmp_path / "ds")]) == 0
    images = {key.split("_", 1)[1]: image for key, _, image in _shard_images(load_dataset(tmp_path / "ds"), "unlabeled")}
    assert images["print"].size == (512, 341) and images["print"].getpixel((5, 5))[0] > 200
    assert images["scan"].size == (512, 341)


def test_a_truncated_camera_photo_is_refused_even_when_it_would_be_downscaled(tree, tmp_path, capsys):
    """Large JPEGs are decoded at a reduced scale; the whole file must still be read and checked."""
    big = tree / "unlabeled" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 2000, 3), dtype=np.uint8)).save(big)
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    rc = main(["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled"),
               "--test", str(tree / "test"), "--out", str(tmp_path / "ds")])
    assert rc == 2 and "big.jpg: not an image PIL can read" in capsys.readouterr().err
