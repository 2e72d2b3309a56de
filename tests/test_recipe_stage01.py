"""End to end: ./run.sh --stage 0 --stop_stage 1 of both recipes with an empty db.sh (embedded mini corpora).

Each recipe is copied into a temporary egs/<corpus>/<recipe> beside a link to the checkout's
egs/TEMPLATE, so its data/, downloads/ and exp/ land in tmp_path, not in the working tree.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile

from conftest import copy_recipes, run_recipe
from speechdistill.data.tables import read_table


def _recipe(repo_root: Path, tmp_path: Path, corpus: str, name: str) -> Path:
    # both recipes: the VoxCeleb one shares local/noise_data.sh with the LibriSpeech one (symlink)
    target = copy_recipes(tmp_path) / corpus / name
    assert os.readlink(target / "utils") == "../../TEMPLATE/utils"
    return target


def _run(recipe: Path, repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_recipe(recipe, *args, timeout=600)


def _validate(recipe: Path, data_dir: str, *options: str) -> None:
    result = subprocess.run(["utils/validate_data_dir.sh", *options, data_dir], cwd=recipe, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _snapshot(recipe: Path) -> dict:
    """path -> mtime of every file under data/ and downloads/ (logs excluded)."""
    return {str(p): p.stat().st_mtime_ns for d in ("data", "downloads") for p in (recipe / d).rglob("*")
            if p.is_file()}


def test_librispeech_recipe_stages_0_1_build_the_default_mini_corpora_and_rerun_does_nothing(tmp_path, repo_root):
    recipe = _recipe(repo_root, tmp_path, "librispeech", "distill")
    first = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    output = first.stdout + first.stderr
    assert "LIBRISPEECH is empty in db.sh: using the embedded mini LibriSpeech" in output
    assert "MUSAN is empty in db.sh" in output and "RIRS_NOISES is empty in db.sh" in output
    for name in ("train", "dev", "test"):
        _validate(recipe, f"data/{name}")
    for name in ("musan_noise", "musan_music", "musan_speech", "rirs"):
        _validate(recipe, f"data/{name}", "--no-text")
    # default size: about 30 minutes of training speech from 40 readers
    samples = sum(int(v) for v in read_table(recipe / "data/train/utt2num_samples").values())
    assert 25 * 60 <= samples / 16000 <= 36 * 60
    assert len({s.split("-")[0] for s in read_table(recipe / "data/train/utt2spk").values()}) == 40
    assert 'test_sets="test"' in (recipe / "data/.stage0.done").read_text()
    assert "rir_dir=data/rirs" in (recipe / "data/.stage1.done").read_text()
    assert set(read_table(recipe / "data/rirs/utt2room").values()) == {"smallroom", "mediumroom", "largeroom"}

    before = _snapshot(recipe)
    second = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already prepared, nothing to do" in second.stdout and "already built, kept" in second.stdout
    assert _snapshot(recipe) == before


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is installed by tools/install_system.sh")
def test_voxceleb_recipe_stages_0_1_with_tiny_mini_corpora_trains_from_m4a_converted_to_flac(tmp_path, repo_root):
    recipe = _recipe(repo_root, tmp_path, "voxceleb", "oskdft")
    result = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "1", "--mini_size", "tiny", "--mini_m4a", "true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "VOXCELEB1 and VOXCELEB2 are empty in db.sh: using the embedded mini VoxCeleb" in result.stdout
    for name in ("train", "test", "musan_noise", "musan_music", "musan_speech", "rirs"):
        _validate(recipe, f"data/{name}", "--no-text")
    # the training speakers came as VoxCeleb2 m4a files and are trained from their FLAC conversions
    m4a = sorted((recipe / "downloads/mini/VoxCeleb2/dev/aac").rglob("*.m4a"))
    train = read_table(recipe / "data/train/wav.scp")
    assert len(m4a) == len(train) > 0
    flac = recipe.resolve() / "dump" / "flac" / "train"
    for key, value in train.items():
        assert key.startswith("id0") and value == str(flac / key.replace(".wav", ".flac"))
        assert soundfile.info(value).format == "FLAC"
    counts = read_table(recipe / "data/train/utt2num_samples")
    assert all(int(counts[key]) == soundfile.info(value).frames for key, value in train.items())
    trials = (recipe / "data/test/trials").read_text().splitlines()
    assert len(trials) == 12 and sum(line.endswith(" target") for line in trials) == 6
    wav = read_table(recipe / "data/test/wav.scp")
    assert all(enroll in wav and test in wav for enroll, test, _ in (line.split() for line in trials))
    assert 'test_sets="test"' in (recipe / "data/.stage0.done").read_text()


@pytest.mark.parametrize("corpus,name,variable", [("librispeech", "distill", "LIBRISPEECH"),
                                                  ("voxceleb", "oskdft", "VOXCELEB2")])
def test_a_db_path_that_does_not_exist_is_an_error_naming_the_variable(tmp_path, repo_root, corpus, name, variable):
    recipe = _recipe(repo_root, tmp_path, corpus, name)
    db = (recipe / "db.sh").read_text()
    (recipe / "db.sh").write_text(db.replace(f"\n{variable}=\n", f"\n{variable}=/no/such/corpus\n"))
    result = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "0")
    assert result.returncode != 0
    assert f"error: {variable}='/no/such/corpus' (db.sh) does not exist" in result.stderr
    assert not (recipe / "downloads").exists()  # no mini corpus built behind the user's back


def _tone(path: Path, samples: int) -> None:
    import numpy as np
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), 0.3 * np.sin(np.arange(samples) / 7.0), 16000, subtype="PCM_16")


def _set_db(recipe: Path, **values: str) -> None:
    db = (recipe / "db.sh").read_text()
    for variable, value in values.items():
        db = db.replace(f"\n{variable}=\n", f"\n{variable}={value}\n")
    (recipe / "db.sh").write_text(db)


def test_librispeech_stage_0_on_a_real_layout_names_the_sets_after_the_parts(tmp_path, repo_root):
    corpus = tmp_path / "corpora" / "LibriSpeech"
    for part, reader in (("train-clean-100", "19"), ("dev-clean", "1272"), ("test-clean", "1089"),
                         ("test-other", "1688")):
        chapter = corpus / part / reader / "100"
        _tone(chapter / f"{reader}-100-0000.flac", 8000)
        (chapter / f"{reader}-100.trans.txt").write_text(f"{reader}-100-0000 A LINE OF {part.upper()}\n")
    recipe = _recipe(repo_root, tmp_path, "librispeech", "distill")
    _set_db(recipe, LIBRISPEECH=str(corpus.parent))
    result = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "0")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "mini" not in result.stdout
    assert list(read_table(recipe / "data/test_other/text").values()) == ["A LINE OF TEST-OTHER"]
    assert list(read_table(recipe / "data/dev/wav.scp")) == ["1272-100-0000"]
    assert 'test_sets="test_clean test_other"' in (recipe / "data/.stage0.done").read_text()
    for name in ("train", "dev", "test_clean", "test_other"):
        _validate(recipe, f"data/{name}")


def test_voxceleb_stage_0_on_real_layouts_combines_training_sets_and_writes_trials(tmp_path, repo_root):
    vox1, vox2 = tmp_path / "vox1", tmp_path / "vox2"
    _tone(vox1 / "dev/wav/id10001/aaaaaaaaaaa/00001.wav", 8000)
    _tone(vox1 / "test/wav/id10270/bbbbbbbbbbb/00001.wav", 8000)
    _tone(vox1 / "test/wav/id10270/ccccccccccc/00002.wav", 8000)
    _tone(vox1 / "test/wav/id10271/ddddddddddd/00001.wav", 8000)
    _tone(vox2 / "dev/aac/id00012/eeeeeeeeeee/00001.wav", 8000)  # converted to wav: used as it is
    (vox1 / "veri_test2.txt").write_text("1 id10270/bbbbbbbbbbb/00001.wav id10270/ccccccccccc/00002.wav\n"
                                         "0 id10270/bbbbbbbbbbb/00001.wav id10271/ddddddddddd/00001.wav\n")
    (vox1 / "meta").mkdir()
    (vox1 / "meta/list_test_all2.txt").write_text("0 id10001/aaaaaaaaaaa/00001.wav id10271/ddddddddddd/00001.wav\n")
    recipe = _recipe(repo_root, tmp_path, "voxceleb", "oskdft")
    _set_db(recipe, VOXCELEB1=str(vox1), VOXCELEB2=str(vox2))
    result = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "0", "--train_sets", "vox2_dev vox1_dev",
                  "--eval_sets", "vox1_O vox1_E")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "warning: vox1_E uses speakers of vox1_dev" in result.stdout
    assert read_table(recipe / "data/train/utt2num_samples") == {"id00012/eeeeeeeeeee/00001.wav": "8000",
                                                                  "id10001/aaaaaaaaaaa/00001.wav": "8000"}
    assert (recipe / "data/vox1_E/trials").read_text() == \
        "id10001/aaaaaaaaaaa/00001.wav id10271/ddddddddddd/00001.wav nontarget\n"
    assert set(read_table(recipe / "data/vox1_O/wav.scp")) == {
        "id10270/bbbbbbbbbbb/00001.wav", "id10270/ccccccccccc/00002.wav", "id10271/ddddddddddd/00001.wav"}
    assert 'test_sets="vox1_O vox1_E"' in (recipe / "data/.stage0.done").read_text()
    for name in ("train", "vox1_O", "vox1_E"):
        _validate(recipe, f"data/{name}", "--no-text")
    missing = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "0", "--eval_sets", "vox1_H")
    assert missing.returncode != 0
    assert "trial list list_test_hard2.txt (vox1_H) is neither in" in missing.stderr
