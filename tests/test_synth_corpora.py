"""Embedded mini corpora: real layouts read by the real prep, determinism by seed, speaker consistency."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speechdistill.corpora import prepare_librispeech, prepare_musan, prepare_rirs, prepare_voxceleb, read_trials
from speechdistill.corpora.synth import MiniCorporaConfig, MiniVoxCelebConfig, make_mini_corpora
from speechdistill.corpora.synth.sentences import SentenceGenerator, load_words, vocabulary
from speechdistill.corpora.synth.voxceleb import make_mini_voxceleb
from speechdistill.data.tables import read_table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    make_mini_corpora(str(out), config=MiniCorporaConfig.tiny(seed=0), nj=2)
    return out


def _fingerprint(root: Path) -> dict:
    """Every file under root (markers aside) -> hash of its content (decoded samples for audio)."""
    prints = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".mini_corpus"):
            continue
        if path.suffix in (".flac", ".wav"):
            data, rate = soundfile.read(str(path), dtype="int16")
            prints[str(path.relative_to(root))] = hashlib.sha1(data.tobytes() + str(rate).encode()).hexdigest()
        else:
            prints[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return prints


def test_mini_corpora_are_read_by_the_real_prep(tiny, tmp_path, repo_root):
    import subprocess

    data = tmp_path / "data"
    libri = tiny / "LibriSpeech"
    speakers = {}
    for part, name in (("train-mini", "train"), ("dev-mini", "dev"), ("test-mini", "test")):
        result = prepare_librispeech(str(libri), [part], str(data / name))
        assert result.num_bad == 0 and result.num_utts >= 2
        speakers[name] = {s.split("-")[0] for s in read_table(data / name / "utt2spk").values()}
        text = read_table(data / name / "text")
        assert all(set(line.lower().split()) <= vocabulary() for line in text.values())
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    assert len(speakers["train"]) == 8  # tiny: 8 training readers
    genders = read_table(data / "train" / "spk2gender")
    assert set(genders.values()) == {"m", "f"}

    vox = tiny / "VoxCeleb1"
    prepare_voxceleb(str(vox), ["dev"], str(data / "vox_train"))
    result = prepare_voxceleb(str(vox), ["test"], str(data / "vox_test"), trials_file=str(vox / "veri_test2.txt"))
    trials = read_trials(data / "vox_test" / "trials")
    labels = [t[2] for t in trials]
    assert labels.count("target") == labels.count("nontarget") == 6 and result.extra["dropped_trials"] == 0
    train_spk = set(read_table(data / "vox_train" / "utt2spk").values())
    test_spk = set(read_table(data / "vox_test" / "utt2spk").values())
    assert not train_spk & test_spk and len(train_spk) == 6 and len(test_spk) == 3
    for enroll, test, label in trials:
        assert (enroll.split("/")[0] == test.split("/")[0]) == (label == "target")

    results = prepare_musan(str(tiny / "musan"), str(data))
    assert {k: r.num_utts for k, r in results.items()} == {"noise": 4, "music": 3, "speech": 4}
    vocals = read_table(data / "musan_music" / "utt2vocals")
    assert set(vocals.values()) <= {"Y", "N"}

    rirs = prepare_rirs(str(tiny), str(data / "rirs"))
    assert rirs.extra == {"smallroom": 2, "mediumroom": 2, "largeroom": 2}
    for name in ("train", "dev", "test", "vox_train", "vox_test", "musan_noise", "musan_music", "musan_speech", "rirs"):
        options = [] if name in ("train", "dev", "test") else ["--no-text"]
        run = subprocess.run([str(repo_root / "egs/TEMPLATE/utils/validate_data_dir.sh"), *options, str(data / name)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_rir_lists_record_the_rt60_the_rirs_have(tiny):
    import pyroomacoustics as pra

    for size in ("smallroom", "mediumroom", "largeroom"):
        lines = (tiny / "RIRS_NOISES" / "simulated_rirs" / size / "rir_list").read_text().splitlines()
        assert len(lines) == 2
        for line in lines:
            match = re.fullmatch(r"--rir-id (\S+) --room-id (\S+) --rt-60 ([0-9.]+) (RIRS_NOISES/\S+\.wav)", line)
            assert match, line
            rir, rate = soundfile.read(str(tiny / match.group(4)))
            independent = pra.experimental.measure_rt60(rir, fs=rate, decay_db=30)
            assert float(match.group(3)) == pytest.approx(independent, rel=0.15)


def test_same_seed_same_bytes_whatever_the_number_of_processes_other_seed_other_corpus(tiny, tmp_path):
    config = MiniCorporaConfig.tiny(seed=0)
    make_mini_corpora(str(tmp_path / "again"), ["librispeech", "musan"], config, nj=1)
    for corpus in ("LibriSpeech", "musan"):
        assert _fingerprint(tmp_path / "again" / corpus) == _fingerprint(tiny / corpus)
    make_mini_corpora(str(tmp_path / "other"), ["librispeech"], MiniCorporaConfig.tiny(seed=1), nj=2)
    mine = sorted(p.read_text() for p in (tiny / "LibriSpeech").rglob("*.trans.txt"))
    theirs = sorted(p.read_text() for p in (tmp_path / "other" / "LibriSpeech").rglob("*.trans.txt"))
    assert mine != theirs


def test_rebuild_rules(tiny, tmp_path):
    out = tmp_path / "m"
    config = MiniCorporaConfig.tiny()
    first = make_mini_corpora(str(out), ["rirs"], config)
    again = make_mini_corpora(str(out), ["rirs"], config)
    assert not first["rirs"]["skipped"] and again["rirs"]["skipped"]
    config.rirs.rirs_per_room = 1
    changed = make_mini_corpora(str(out), ["rirs"], config)
    assert not changed["rirs"]["skipped"] and changed["rirs"]["produced"]["rirs"]["small"] == 1
    foreign = tmp_path / "f" / "LibriSpeech"
    foreign.mkdir(parents=True)
    with pytest.raises(ValueError, match="not made by make_mini_corpora"):
        make_mini_corpora(str(tmp_path / "f"), ["librispeech"], config)


def _speaker_features(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Mean log band energies of the louder frames + log median F0 (autocorrelation): a crude voice print."""
    size, hop = 512, 256
    frames = np.lib.stride_tricks.sliding_window_view(audio, size)[::hop] * np.hanning(size)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    loud = power.sum(axis=1) > np.median(power.sum(axis=1))
    freqs = np.fft.rfftfreq(size, 1 / rate)
    edges = np.geomspace(80, 7600, 25)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    spectrum = np.log(bands[loud] + 1e-10).mean(axis=0)
    f0 = []
    for frame in frames[loud][::4]:
        corr = np.correlate(frame, frame, "full")[size - 1:]
        lag = 40 + int(np.argmax(corr[40:267]))  # 60-400 Hz
        if corr[lag] > 0.3 * corr[0]:
            f0.append(rate / lag)
    return np.concatenate([spectrum - spectrum.mean(), [5 * np.log(np.median(f0)) if f0 else 0.0]])


def test_speakers_are_consistent_across_utterances_and_channels(tmp_path):
    config = MiniVoxCelebConfig(train_minutes=2.0, train_speakers=8, test_speakers=2, test_utterances_per_speaker=2,
                                videos_per_speaker=3, trials=4, max_words=8)
    make_mini_voxceleb(tmp_path, config, seed=3, nj=2)
    files = sorted((tmp_path / "VoxCeleb1" / "dev" / "wav").rglob("*.wav"))
    features = np.stack([_speaker_features(soundfile.read(str(f))[0]) for f in files])
    speakers = np.array([f.parts[-3] for f in files])
    assert len(set(speakers)) == 8 and len(files) >= 24
    correct = 0
    for i in range(len(files)):  # leave-one-out nearest speaker centroid
        others = np.arange(len(files)) != i
        centroids = {s: features[others & (speakers == s)].mean(axis=0) for s in set(speakers)}
        guess = min(centroids, key=lambda s: np.linalg.norm(features[i] - centroids[s]))
        correct += guess == speakers[i]
    assert correct / len(files) >= 0.9  # chance: 1/8


def test_sentence_generator_uses_a_vocabulary_of_over_a_thousand_words():
    words = vocabulary()
    assert len(words) >= 1000
    sections = load_words()
    assert {"noun", "adjective", "verb_transitive", "verb_intransitive", "name"} <= set(sections)
    generator = SentenceGenerator(np.random.default_rng(0))
    sentences = [generator.sentence(6, 20) for _ in range(300)]
    used = {w.lower() for s in sentences for w in s.split()}
    assert used <= words and len(used) > 600
    assert all(s == s.upper() and len(s.split()) >= 6 for s in sentences)
