"""Human parsing for SemMIM: a transformers segmentation model writes one parse map per image.

`run` parses a dataset (batched, resumable, sharded), `labelmaps` places a parser's classes in
the project's label sets, `report` summarises maps and compares two sets of them.
"""
