"""End to end: stages 0, 4 and 5 of egs/librispeech/distill/run.sh on a tiny corpus in LibriSpeech's layout
with a small random-weight upstream: tokens, ASR probe training, decoding under test conditions, RESULTS.md.

The recipe is copied into a temporary egs/librispeech/distill beside a link to the checkout's
egs/TEMPLATE, so its data/ and exp/ land in tmp_path; db.sh points at the corpus the test writes.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile

from conftest import copy_librispeech_recipe, run_recipe
from speechdistill.asr.model import load_asr_model
from speechdistill.asr.task import AsrConfig
from speechdistill.config import load_config
from speechdistill.data.tables import read_table

from test_asr_common import make_upstream, random_texts, tone_word_audio

PARTS = {"train-clean-100": (3, 4), "dev-clean": (1, 2), "test-clean": (1, 3)}  # readers, utterances each


def _librispeech(root: Path) -> Path:
    """LibriSpeech/<part>/<reader>/<chapter>/<reader>-<chapter>-<NNNN>.flac with trans.txt per chapter."""
    corpus = root / "LibriSpeech"
    rng = np.random.default_rng(0)
    reader = 100
    for part, (readers, count) in PARTS.items():
        for _ in range(readers):
            reader += 1
            chapter = corpus / part / str(reader) / "7"
            chapter.mkdir(parents=True)
            texts = list(random_texts(count, seed=reader).values())
            lines = []
            for number, text in enumerate(texts):
                key = f"{reader}-7-{number:04d}"
                soundfile.write(str(chapter / f"{key}.flac"), tone_word_audio(text, rng), 16000, subtype="PCM_16")
                lines.append(f"{key} {text}\n")
            (chapter / f"{reader}-7.trans.txt").write_text("".join(lines))
    return corpus


def _recipe(repo_root: Path, tmp_path: Path) -> Path:
    return copy_librispeech_recipe(tmp_path)


def _run(recipe: Path, repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_recipe(recipe, *map(str, args), timeout=900)


def test_recipe_configs_load(repo_root):
    for name in ("asr_superb", "asr_mini"):
        config = load_config(AsrConfig, repo_root / f"egs/librispeech/distill/conf/{name}.yaml",
                             {"train_data": "d", "upstream": "u", "token_dir": "t"})
        config.validate()
        assert config.max_seconds is None


def test_stages_4_and_5_train_decode_and_write_results(tmp_path, repo_root):
    recipe = _recipe(repo_root, tmp_path)
    corpus = _librispeech(tmp_path / "corpus")
    (recipe / "db.sh").write_text(f"LIBRISPEECH={corpus}\nMUSAN=\nRIRS_NOISES=\n")
    upstream = make_upstream(tmp_path / "upstream")
    data = _run(recipe, repo_root, "--stage", "0", "--stop_stage", "0", "--test_sets", "test-clean")
    assert data.returncode == 0, data.stdout[-3000:] + data.stderr[-3000:]

    args = ["--stage", "4", "--stop_stage", "5", "--ngpu", "0", "--upstream", upstream, "--asr_config",
            "conf/asr_mini.yaml", "--asr_args", "--max_steps 4 --valid_every 2 --batch_seconds 10 --num_workers 0",
            "--test_conditions", "clean snr5", "--asr_dump_features", "true"]
    first = _run(recipe, repo_root, *args)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "no data/.stage1.done: the snr conditions add white Gaussian noise" in first.stdout
    exp = recipe / "exp" / "asr_mini_upstream"
    model, tokenizer, info = load_asr_model(exp / "asr_model")
    assert info.upstream == str(upstream.resolve()) and info.token_type == "char"
    assert (recipe / "data/token_list/char/tokens.txt").read_text() == (exp / "asr_model/tokens.txt").read_text()
    assert "update 4/4" in (exp / "train.log").read_text()
    # the probe trained on hidden states dumped once per data dir (utils/recipe.sh dump_upstream_features)
    stage0 = dict(line.split("=", 1) for line in (recipe / "data/.stage0.done").read_text().splitlines() if "=" in line)
    command = (exp / "log/asr_train.log").read_text()
    for option, name in (("--train_features", stage0["train_set"]), ("--valid_features", stage0["valid_set"])):
        assert f"{option} exp/asr_mini_upstream/dump/{name}" in command
        assert sorted(read_table(exp / "dump" / name / "feats.scp")) == \
            sorted(read_table(recipe / "data" / name / "utt2num_samples"))

    results = (exp / "RESULTS.md").read_text()
    refs = read_table(recipe / "data/test_clean/text")
    words = sum(len(t.split()) for t in refs.values())
    chars = sum(len(" ".join(t.split())) for t in refs.values())
    for condition in ("clean", "snr5"):
        name = f"decode_greedy/test_clean/{condition}"
        assert (exp / name / "score_wer/result.txt").is_file() and (exp / name / "score_cer/result.txt").is_file()
        wer_row = next(line for line in results.split("### CER")[0].splitlines() if line.startswith(f"|{name}|"))
        cer_row = next(line for line in results.split("### CER")[1].splitlines() if line.startswith(f"|{name}|"))
        assert wer_row.split("|")[2:4] == [str(len(refs)), str(words)]
        assert cer_row.split("|")[2:4] == [str(len(refs)), str(chars)]
    assert "snr5: white Gaussian noise at 5 dB SNR" in results
    assert results.index("decode_greedy/test_clean/clean|") < results.index("decode_greedy/test_clean/snr5|")

    again = _run(recipe, repo_root, *args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already trained with these settings; kept" in again.stdout
    assert "data/token_list/char/tokens.txt is up to date" in again.stdout
    assert again.stdout.count("/text is up to date") == 2  # both decodes

    missing = _run(recipe, repo_root, "--stage", "4", "--stop_stage", "4", "--ngpu", "0", "--upstream",
                   tmp_path / "no_such_model")
    assert missing.returncode == 1 and "error: upstream" in missing.stdout and "not found" in missing.stdout
    no_model = _run(recipe, repo_root, "--stage", "5", "--stop_stage", "5", "--asr_exp", "exp/never_trained")
    assert no_model.returncode == 1 and "run stage 4 first" in no_model.stdout
