"""SUPERB probe data prep on files in the real corpora's layouts: Speech Commands v1.0 (standard lists, background
noise, the separate test archive), Fluent Speech Commands CSVs, VoxCeleb1's iden_split.txt, and phone transcripts
of a LibriSpeech data dir from CMUdict and a lexicon file."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speechdistill.corpora.common import CorpusError
from speechdistill.corpora.fluent_commands import prepare_fluent_commands
from speechdistill.corpora.lexicon import prepare_phone_dir
from speechdistill.corpora.speech_commands import prepare_speech_commands
from speechdistill.corpora.voxceleb import prepare_voxceleb_sid
from speechdistill.data.tables import read_table

RNG = np.random.default_rng(0)


def _wav(path: Path, seconds: float = 1.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), (0.1 * RNG.standard_normal(int(seconds * 16000))).astype(np.float32), 16000,
                    subtype="PCM_16")


def test_speech_commands_standard_split_labels_and_silence(tmp_path):
    root = tmp_path / "speech_commands_v0.01"
    for word in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "bed", "marvin"):
        for speaker in ("0a1b2c3d", "1f2e3d4c", "2b3c4d5e"):
            _wav(root / word / f"{speaker}_nohash_0.wav")
    (root / "validation_list.txt").write_text("yes/1f2e3d4c_nohash_0.wav\nbed/1f2e3d4c_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("".join(f"{w}/2b3c4d5e_nohash_0.wav\n" for w in ("yes", "go", "marvin")))
    _wav(root / "_background_noise_" / "white_noise.wav", 20.4)
    _wav(root / "_background_noise_" / "running_tap.wav", 10.0)
    dirs = {}
    for split in ("train", "dev", "test"):
        prepare_speech_commands(str(root), split, str(tmp_path / f"ks_{split}"), clip_dir=str(tmp_path / f"c_{split}"))
        dirs[split] = read_table(tmp_path / f"ks_{split}" / "utt2label")
    assert dirs["dev"]["1f2e3d4c-yes-0"] == "yes" and dirs["dev"]["1f2e3d4c-bed-0"] == "_unknown_"
    assert dirs["test"]["2b3c4d5e-marvin-0"] == "_unknown_" and "2b3c4d5e-yes-0" not in dirs["train"]
    assert sum(1 for v in dirs["train"].values() if v != "_silence_") == 36 - 2 - 3
    # 1-s silence clips: the first 80 % of each recording for train (16 + 8), the next 10 % for dev (2 + 1) ...
    assert [sum(1 for v in d.values() if v == "_silence_") for d in dirs.values()] == [24, 3, 3]
    assert read_table(tmp_path / "ks_train" / "utt2num_samples")["bgnoise-white_noise-0003"] == "16000"
    # the separate SUPERB test archive: labels from its directory names
    test_root = tmp_path / "speech_commands_test_set_v0.01"
    _wav(test_root / "_silence_" / "a1b2c3d4_nohash_0.wav")
    _wav(test_root / "yes" / "a1b2c3d4_nohash_1.wav")
    prepare_speech_commands(str(root), "test", str(tmp_path / "ks_superb_test"), test_dir=str(test_root))
    assert read_table(tmp_path / "ks_superb_test" / "utt2label") == {"a1b2c3d4-silence-0": "_silence_",
                                                                     "a1b2c3d4-yes-1": "yes"}
    (root / "validation_list.txt").unlink()
    with pytest.raises(CorpusError, match="validation_list.txt"):
        prepare_speech_commands(str(root), "dev", str(tmp_path / "ks_x"))


def test_fluent_commands_csv_intents(tmp_path):
    root = tmp_path / "fluent_speech_commands_dataset"
    rows = [("s1", "u1", "Change language", "change language", "German", "none"),
            ("s1", "u2", "Turn on the lights in the kitchen", "activate", "lights", "kitchen"),
            ("s2", "u3", "Bring me my shoes", "bring", "shoes", "none")]
    (root / "data").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        with open(root / "data" / f"{split}_data.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            for index, (speaker, name, text, *intent) in enumerate(rows):
                writer.writerow([index, f"wavs/speakers/{speaker}/{name}.wav", speaker, text, *intent])
    for speaker, name, *_ in rows[:2]:
        _wav(root / "wavs" / "speakers" / speaker / f"{name}.wav", 1.5)
    result = prepare_fluent_commands(str(root), "dev", str(tmp_path / "ic_dev"))
    assert read_table(tmp_path / "ic_dev" / "utt2intent") == {"s1-u1": "change_language German none",
                                                              "s1-u2": "activate lights kitchen"}
    assert read_table(tmp_path / "ic_dev" / "text")["s1-u2"] == "Turn on the lights in the kitchen"
    assert result.num_bad == 1 and "s2-u3" in (tmp_path / "ic_dev" / "bad_utts").read_text()


def test_voxceleb_iden_split(tmp_path):
    root = tmp_path / "VoxCeleb1"
    keys = {"1": ["id10001/vidA/00001.wav", "id10002/vidC/00001.wav"], "2": ["id10001/vidA/00002.wav"],
            "3": ["id10001/vidB/00001.wav", "id10002/vidD/00001.wav"]}
    for number, utts in keys.items():
        for utt in utts:
            _wav(root / ("test" if utt.startswith("id10002") else "dev") / "wav" / utt, 0.5)
    (root / "iden_split.txt").write_text("".join(f"{n} {u}\n" for n, utts in keys.items() for u in utts)
                                         + "1 id10003/vidE/00001.wav\n")
    for split, number in (("train", "1"), ("dev", "2"), ("test", "3")):
        result = prepare_voxceleb_sid(str(root), str(root / "iden_split.txt"), split, str(tmp_path / split))
        utt2spk = read_table(tmp_path / split / "utt2spk")
        assert sorted(utt2spk) == sorted(keys[number]) and all(v == k.split("/")[0] for k, v in utt2spk.items())
    assert result.num_bad == 0 and "id10003" in (tmp_path / "train" / "bad_utts").read_text()


def test_phone_transcripts_from_cmudict_and_a_lexicon(tmp_path):
    data = tmp_path / "librispeech_test"
    data.mkdir()
    audio = tmp_path / "a.wav"
    _wav(audio)
    utts = {"1-1-0000": "HELLO WORLD", "1-1-0001": "THE ZORGBLATT READS", "1-1-0002": "QWXZZYKQ"}
    (data / "wav.scp").write_text("".join(f"{u} {audio}\n" for u in utts))
    (data / "utt2spk").write_text("".join(f"{u} 1-1\n" for u in utts))
    (data / "utt2num_samples").write_text("".join(f"{u} 16000\n" for u in utts))
    (data / "text").write_text("".join(f"{u} {t}\n" for u, t in utts.items()))
    prepare_phone_dir(str(data), str(tmp_path / "pr"))
    phones = read_table(tmp_path / "pr" / "phones")
    assert phones["1-1-0000"] == "HH AH L OW W ER L D"  # CMUdict's first pronunciations, stress removed
    assert phones["1-1-0001"] == "DH AH SPN R IY D Z"
    assert (tmp_path / "pr" / "oov_words.txt").read_text() == "ZORGBLATT 1\nQWXZZYKQ 1\n"
    assert phones["1-1-0002"] == "SPN"
    assert (tmp_path / "pr" / "wav.scp").read_text() == (data / "wav.scp").read_text()
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("ZORGBLATT Z AO1 R G B L AE2 T\nHELLO HH EH0 L OW1\n")
    prepare_phone_dir(str(data), str(tmp_path / "pr_keep"), lexicons=[str(lexicon)], stress="keep", oov="drop")
    kept = read_table(tmp_path / "pr_keep" / "phones")
    assert kept["1-1-0000"] == "HH EH0 L OW1 W ER1 L D"  # the lexicon file wins over CMUdict
    assert kept["1-1-0001"] == "DH AH0 Z AO1 R G B L AE2 T R IY1 D Z"
    assert "1-1-0002" not in kept and "QWXZZYKQ" in (tmp_path / "pr_keep" / "bad_utts").read_text()
    assert "1-1-0002" not in read_table(tmp_path / "pr_keep" / "utt2spk")
