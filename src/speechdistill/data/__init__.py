"""Kaldi data directories and audio input.

Submodules are imported on demand (``from speechdistill.data.datadir import DataDir``) so that
the command-line tools start quickly and never pull in torch.
"""
