"""Data sets as WebDataset shards: the `dataset.json` index, shard I/O and training streams."""
