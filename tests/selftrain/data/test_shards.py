import io

import pytest
from PIL import Image

from selftrain.data.dataset_info import ShardEntry
from selftrain.data.shards import RawSample, decode_sample, iter_shard, write_split
from selftrain.errors import CorruptSampleError, SelftrainError


def _png(value: int, size=(5, 7), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_round_trip_keeps_keys_images_labels_and_checksums(tmp_path):
    samples = [RawSample(key=f"k{i}", image=_png(i * 10), ext="png", label=i % 3) for i in range(7)]
    entries = write_split(tmp_path, "labeled", samples, samples_per_shard=3)

    assert [e.path for e in entries] == ["labeled-000000.tar", "labeled-000001.tar", "labeled-000002.tar"]
    assert [e.samples for e in entries] == [3, 3, 1]
    got = []
    for e in entries:
        for raw in iter_shard(tmp_path / e.path, e):
            d = decode_sample(raw, channels=1, num_classes=3, labeled=True)
            got.append((d.key, d.image.getpixel((0, 0)), d.label, d.image.size))
    assert got == [(f"k{i}", i * 10, i % 3, (5, 7)) for i in range(7)]


def test_unlabeled_shards_have_no_label(tmp_path):
    (e,) = write_split(tmp_path, "unlabeled", [RawSample(key="a", image=_png(1), ext="png")], 10)
    (raw,) = list(iter_shard(tmp_path / e.path, e))
    assert "cls" not in raw
    assert decode_sample(raw, channels=1, num_classes=3, labeled=False).label is None


def test_grayscale_image_is_converted_for_rgb_data_sets(tmp_path):
    (e,) = write_split(tmp_path, "x", [RawSample(key="a", image=_png(7), ext="png", label=0)], 10)
    (raw,) = list(iter_shard(tmp_path / e.path, e))
    assert decode_sample(raw, channels=3, num_classes=2, labeled=True).image.mode == "RGB"


def test_keys_with_dots_are_refused(tmp_path):
    with pytest.raises(SelftrainError, match="must not contain dots"):
        write_split(tmp_path, "x", [RawSample(key="a.b", image=_png(1), ext="png")], 10)


def test_checksum_mismatch_names_the_shard(tmp_path):
    (e,) = write_split(tmp_path, "x", [RawSample(key="a", image=_png(1), ext="png", label=0)], 10)
    wrong = ShardEntry(path=e.path, samples=1, sha256="0" * 64)
    with pytest.raises(SelftrainError, match=r"x-000000\.tar: sha256 differs"):
        list(iter_shard(tmp_path / e.path, wrong))
    assert len(list(iter_shard(tmp_path / e.path, wrong, verify=False))) == 1


def test_label_out_of_range_is_a_corrupt_sample(tmp_path):
    (e,) = write_split(tmp_path, "x", [RawSample(key="a", image=_png(1), ext="png", label=5)], 10)
    (raw,) = list(iter_shard(tmp_path / e.path, e))
    with pytest.raises(CorruptSampleError, match="label 5 but the data set has 3 classes"):
        decode_sample(raw, channels=1, num_classes=3, labeled=True)
