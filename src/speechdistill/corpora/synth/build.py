"""Build-once plumbing shared by the mini corpora: temp dir, rename, marker, rebuild rules."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

from speechdistill.data.tables import replace_dir_atomically

from ..common import CorpusError
from .espeak import make_voice_data
from .voices import Voice

logger = logging.getLogger("speechdistill.corpora")

MARKER = ".mini_corpus.json"
# bump when the generators change what they write, so that existing mini corpora are rebuilt
GENERATOR_VERSION = 1


def build_once(out_root: Path, name: str, settings: Mapping[str, Any],
               build: Callable[[Path], Dict[str, Any]]) -> Dict[str, Any]:
    """Build ``out_root/name`` with ``build(staging_dir)`` unless it exists with the same settings.

    The corpus is built under a hidden temporary name and renamed into place when complete.

    Returns the marker content (settings and what ``build`` reported) plus ``skipped``. A corpus
    made with other settings is rebuilt; a directory of that name that we did not make is an error.
    """
    target = out_root / name
    settings = json.loads(json.dumps({**settings, "generator_version": GENERATOR_VERSION}))
    marker_path = target / MARKER
    if marker_path.is_file():
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        if marker.get("settings") == settings:
            logger.info("%s exists with the same settings; not rebuilding it", target)
            return {**marker, "skipped": True}
        logger.info("%s was made with other settings; rebuilding it", target)
    elif target.exists():
        raise CorpusError(f"{target} exists but was not made by make_mini_corpora (no {MARKER}). "
                          "Fix: remove it or choose another output directory")
    marker: Dict[str, Any] = {"settings": settings}

    def write(staging: Path) -> None:
        marker["produced"] = build(staging)
        (staging / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    replace_dir_atomically(target, write)
    return {**marker, "skipped": False}


class VoiceData:
    """The espeak-ng data dir holding the variant files of ``voices``, removed on exit."""

    def __init__(self, voices: List[Voice], work_dir: Path) -> None:
        self.work_dir = work_dir / ".espeak"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.path = str(make_voice_data({v.name: v.variant_text for v in voices}, self.work_dir))

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def shard_seeds(rng, count: int) -> List[int]:
    return [int(s) for s in rng.integers(0, 2 ** 63 - 1, size=count)]
