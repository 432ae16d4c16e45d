"""benchmarks/stored_size.py: the measurement behind `data import --max-side`'s default."""

from __future__ import annotations

import json

from tests.helpers import load_benchmark


def test_it_compares_camera_photos_stored_whole_with_the_capped_import(capsys):
    bench = load_benchmark("stored_size")
    assert bench.main(["--photos", "5", "--epochs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    originals, capped = result["originals"], result["capped"]
    assert (originals["max_side"], capped["max_side"]) == (0, 512)
    # The capped shards hold 512-pixel photos, the others 12-megapixel ones.
    assert capped["stored_mb"] < originals["stored_mb"] / 4
    assert result["unlabeled"] == 1 and result["train_size"] == 128
    rates = originals["stream_images_per_s"], capped["stream_images_per_s"]
    assert result["ratio"] == round(rates[0] / rates[1], 4)
