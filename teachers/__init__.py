"""Teachers: models that label the unlabeled data.

`supervised` trains the Noisy Student teacher (iteration 0) on the labeled shards alone.
"""
