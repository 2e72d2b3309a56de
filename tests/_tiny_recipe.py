"""A copy of egs/librispeech/distill ready for stage 3 in seconds, for the launcher and signal tests.

Its data/train (16 utterances) and data/dev are written directly (wav.scp + utt2num_samples, what
stage 3 reads), the teacher is a tiny random 12-layer model of width 64 in exp/teacher, and the
stage-0 and stage-2 markers say so; its path.sh names this checkout (the copy lives outside it).
conf/distilhubert_tiny.yaml is the distilhubert preset with its student shrunk to that teacher and
without dropout, so that runs on one and on two processes can be compared. Stage 3 of ``./run.sh --distill_config conf/distilhubert_tiny.yaml --distill_args
"$TINY_DISTILL_ARGS"`` then takes seconds per update on a CPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, copy_librispeech_recipe  # noqa: E402
from _train_toy import make_data_dir  # noqa: E402
from test_distill_common import TINY_STUDENTS, save_tiny_teacher  # noqa: E402

TINY_CONFIG = "conf/distilhubert_tiny.yaml"
TINY_DISTILL_ARGS = ("--batch_seconds 1.0 --max_seconds 0.5 --min_seconds 0.3 --precision fp32 "
                     "--teacher_precision fp32 --num_workers 0 --threads 1 --valid_at_start false --valid_every 0 "
                     "--log_every 1 --keep_checkpoints 50")


def make_tiny_distill_recipe(root: Path) -> Path:
    """``root/egs/librispeech/distill`` with stages 0-2 done as described above; returns its path."""
    recipe = copy_librispeech_recipe(root)
    # cluster jobs see only PATH (sbatch --export=PATH): name the checkout in path.sh itself
    path_sh = recipe / "path.sh"
    content = path_sh.read_text()
    path_sh.unlink()  # (a link to egs/TEMPLATE/path.sh: write a file of the copy's own, not through the link)
    path_sh.write_text(f"export SPEECHDISTILL_ROOT=${{SPEECHDISTILL_ROOT:-{REPO}}}\n" + content)
    lengths = np.random.default_rng(11).integers(6000, 14000, 16).tolist()
    make_data_dir(recipe / "data" / "train", lengths, seed=3)
    make_data_dir(recipe / "data" / "dev", [8000, 11000], seed=4, prefix="val")
    (recipe / "data" / ".stage0.done").write_text("corpus=tiny\ntrain_set=train\nvalid_set=dev\ntest_sets=\"\"\n")
    teacher = save_tiny_teacher(recipe / "exp" / "teacher")
    (teacher / ".stage2.done").write_text(f"teacher={teacher}\n")
    preset = yaml.safe_load((recipe / "conf" / "distilhubert.yaml").read_text())
    preset["student_encoder"] = dict(TINY_STUDENTS["distilhubert"], dropout=0.0, attention_dropout=0.0,
                                     activation_dropout=0.0)
    (recipe / TINY_CONFIG).write_text(yaml.safe_dump(preset))
    return recipe
