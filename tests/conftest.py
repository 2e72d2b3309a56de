"""Shared pytest fixtures. Tests make their own small real files under tmp_path."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# Determinism and a bounded thread count on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


# Modules that run recipes, demos, several processes or a real Slurm end to end (tens of seconds to minutes
# each): `make check` (`pytest -m "not slow"`) leaves them out; `make test` runs everything.
SLOW_MODULES = frozenset({
    "test_demo", "test_demo_sv", "test_recipe_distill", "test_recipe_sv", "test_recipe_asr", "test_recipe_stage01",
    "test_recipe_signals", "test_slurm_real", "test_train_distributed", "test_launch_ranks", "test_distill_resume",
    "test_train_resume", "test_train_run_lock", "test_sv_train", "test_pretrain_cli", "test_gpu_path",
    "test_benchmark", "test_bad_inputs", "test_import_formats", "test_models_fullsize", "test_synth_corpora",
    "test_corpora_prep", "test_asr_train", "test_asr_decode", "test_sv_extract", "test_profile", "test_sv_numerics",
    "test_recipe_superb", "test_export_onnx", "test_export_s3prl",
    # the heaviest in-process modules (training a tiny model to a result, Base-sized forwards in bf16)
    "test_distill_losses", "test_bf16_tolerance", "test_sv_results", "test_ctc_asr", "test_ecapa", "test_sv_task",
    "test_asr_task", "test_sv_composition",
})


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end or multi-process test; skipped by `make check`")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(params=["auto", "reference"])
def kernel_policy(request, monkeypatch) -> str:
    """Runs a test under both kernel policies: ``auto`` (the kernels of this machine) and ``reference`` (the
    model's plain PyTorch, the path a GPU runs); set in the environment, so child processes inherit it."""
    monkeypatch.setenv("SPEECHDISTILL_KERNELS", request.param)
    return request.param


RECIPES = ("librispeech/distill", "voxceleb/oskdft")


def copy_recipes(root: Path) -> Path:
    """``root/egs``: copies of both recipes without their data/exp/downloads/dump, beside links to the
    checkout's egs/TEMPLATE and conf/, so that
    everything they write lands under ``root``. Returns ``root/egs``."""
    for name in RECIPES:
        shutil.copytree(REPO / "egs" / name, root / "egs" / name, symlinks=True,
                        ignore=shutil.ignore_patterns("data", "exp", "downloads", "dump"))
    (root / "egs" / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
    (root / "conf").symlink_to(REPO / "conf")  # the method presets the recipe's conf/ links to
    return root / "egs"


def copy_librispeech_recipe(root: Path) -> Path:
    """``root/egs/librispeech/distill`` of :func:`copy_recipes`."""
    return copy_recipes(root) / "librispeech" / "distill"


def single_process_env(**extra: str) -> dict:
    """This environment for a child process on one thread, outside any torchrun / Slurm launch (their
    variables would make the trainer join a process group), plus ``extra``. SLURM_CONF (where the
    Slurm clients find a cluster, not a launch variable) is kept."""
    env = {name: value for name, value in os.environ.items() if (not name.startswith("SLURM_") or name == "SLURM_CONF")
           and name not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def run_recipe(recipe: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``./run.sh ARGS`` in ``recipe`` on one thread per job, outside any torchrun/Slurm environment."""
    env = single_process_env(SPEECHDISTILL_ROOT=str(REPO))
    return subprocess.run(["./run.sh", *args], cwd=recipe, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def librispeech_tiny_stages_0_1(tmp_path_factory) -> Path:
    """A copy of egs/librispeech/distill (outside the working tree) after ``run.sh --stage 0
    --stop_stage 1 --mini_size tiny`` from scratch: the tiny mini LibriSpeech, MUSAN and RIRs are
    synthesized under its downloads/mini and prepared as data dirs. tests/test_recipe_distill.py
    runs its presets in it; tests/test_demo.py copies its downloads/mini (the synthesis, the same
    for the same size and seed) and prepares its own data dirs from them."""
    recipe = copy_librispeech_recipe(tmp_path_factory.mktemp("recipe"))
    result = run_recipe(recipe, "--stage", "0", "--stop_stage", "1", "--mini_size", "tiny")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "mini librispeech: built" in result.stdout, result.stdout[-4000:]
    return recipe


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real Slurm of two nodes on this machine (tools/slurm_local.sh: munged, slurmctld, two slurmd; 4 fake
    GPUs per node), for the whole session; yields its slurm.conf path (give it to clients as SLURM_CONF).
    Skips, with the reason, only where one cannot run here (no packages and no root to install them)."""
    directory = tmp_path_factory.mktemp("slurm")
    script = REPO / "tools" / "slurm_local.sh"
    started = subprocess.run([str(script), "start", "--nodes", "2", "--dir", str(directory)], capture_output=True,
                             text=True, timeout=600)
    if started.returncode == 3:
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, f"tools/slurm_local.sh start failed:\n{started.stdout}{started.stderr}"
    yield directory / "slurm.conf"
    subprocess.run([str(script), "stop", "--dir", str(directory)], capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ independent EER / minDCF references
def sklearn_eer(scores, labels) -> float:
    """EER (a fraction) where the ROC of scikit-learn (linear between its operating points) crosses FNR = FPR;
    independent of speechdistill.metrics. ``scores`` [N] float, ``labels`` [N] bool (True: target)."""
    import numpy as np
    from scipy.optimize import brentq
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0, xtol=1e-14)


def sklearn_min_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost over scikit-learn's ROC operating points."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    cost = c_miss * (1 - tpr) * p_target + c_fa * fpr * (1 - p_target)
    return cost.min() / min(c_miss * p_target, c_fa * (1 - p_target))


def scored_trials(score_file: Path, trials_file: Path):
    """(scores [N], labels [N] bool) of a Kaldi/WeSpeaker trial list (``enrol test target|nontarget``) from a
    score file (``enrol test score [...]``, any order)."""
    import numpy as np

    trials = [line.split() for line in Path(trials_file).read_text().splitlines()]
    scored = {tuple(f[:2]): float(f[2]) for f in map(str.split, Path(score_file).read_text().splitlines())}
    return (np.array([scored[(enrol, test)] for enrol, test, _ in trials]),
            np.array([label == "target" for _, _, label in trials]))

