"""File names inside a decode dir and how to read its record; free of torch so that scoring starts fast.

A decode dir (written by :func:`speechdistill.asr.decode.decode_data_dir`) holds ``text``
(hypotheses), ``decode_info.json`` (what was decoded with what; written last, so its presence
marks a finished decode), ``decode.log`` and ``skipped_utts.txt``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Union

TEXT_FILE, INFO_FILE, LOG_FILE, SKIPPED_FILE = "text", "decode_info.json", "decode.log", "skipped_utts.txt"


def read_decode_info(decode_dir: Union[str, os.PathLike]) -> Dict:
    """``decode_info.json`` of a finished decode dir (ValueError naming the file when absent)."""
    path = Path(decode_dir) / INFO_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found; {decode_dir} holds no finished decode. Fix: run asr_decode for it")
    return json.loads(path.read_text(encoding="utf-8"))
