"""The data-dir validator: library reports and utils/validate_data_dir.sh exit codes on real dirs."""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speechdistill.data.validate import validate_data_dir

REPO = Path(__file__).resolve().parents[1]
VALIDATE = REPO / "egs" / "TEMPLATE" / "utils" / "validate_data_dir.sh"

GOOD = {
    "utt2spk": "spk1-a spk1\nspk1-b spk1\nspk2-c spk2\n",
    "spk2utt": "spk1 spk1-a spk1-b\nspk2 spk2-c\n",
    "text": "spk1-a HELLO WORLD\nspk1-b GOOD MORNING\nspk2-c GOOD NIGHT\n",
    "wav.scp": "spk1-a /c/a.wav\nspk1-b flac -c -d -s /c/b.flac |\nspk2-c /c/c.ark:1234\n",
}


def make(tmp_path, name="d", **changes):
    """A data dir = GOOD with files replaced (str), added, or removed (None); keys use _ for '.'."""
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    files = dict(GOOD)
    for key, text in changes.items():
        files[key.replace("_scp", ".scp").replace("_and_", "_and_")] = text
    for file_name, text in files.items():
        if text is not None:
            (directory / file_name).write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return directory


def problems(directory, **options):
    return validate_data_dir(directory, progress=False, **options).problems


def run_validate(*args):
    return subprocess.run([str(VALIDATE), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_correct_dir_passes(tmp_path):
    directory = make(tmp_path)
    assert problems(directory) == []
    result = run_validate(directory)
    assert result.returncode == 0 and result.stdout == f"Successfully validated data-directory {directory}\n"


# The malformed cases of the issue: each must fail with a message naming the file (and line).
MALFORMED = {
    "unsorted file": (dict(text="spk1-b GOOD MORNING\nspk1-a HELLO WORLD\nspk2-c GOOD NIGHT\n"),
                      "text:2: key 'spk1-a': not sorted in C-locale byte order: line 1 'spk1-b' comes before line 2"),
    "duplicate key": (dict(wav_scp=GOOD["wav.scp"] + "spk2-c /c/d.wav\n"),
                      "wav.scp:4: key 'spk2-c': 1 repeated key(s); first: 'spk2-c' on lines 3 and 4"),
    "missing final newline": (dict(text=GOOD["text"].rstrip("\n")),
                              "text:3: key 'spk2-c': missing newline at the end of the last line"),
    "utt2spk/text mismatch": (dict(text="spk1-a HELLO\nspk1-x OOPS\nspk2-c NIGHT\n"),
                              "text: keys differ from the utterances of utt2spk: 1 utterances of utt2spk missing "
                              "here (first: 'spk1-b'); 1 key(s) that are not utterances of utt2spk (first: 'spk1-x' "
                              "on line 2)"),
    "utt2spk with 3 fields (Kaldi exits 0)": (dict(utt2spk="spk1-a spk1\nspk1-b spk1 extra\nspk2-c spk2\n"),
                                               "utt2spk:2: key 'spk1-b': 1 line(s) with the wrong number of fields; "
                                               "expected 2, found 3"),
    "_-joined ids": (dict(utt2spk="13_1 13\n1_2 1\n1_4 1\n", spk2utt="1 1_2 1_4\n13 13_1\n",
                          text="13_1 A\n1_2 B\n1_4 C\n", wav_scp="13_1 /x\n1_2 /y\n1_4 /z\n"),
                     "utt2spk:2: key '1_2': not sorted by speaker: line 1 '13_1 13' comes before line 2 '1_2 1', but "
                     "speaker '1' sorts before '13' in byte order. Fix: make every utterance id start with its "
                     "speaker id followed by '-'"),
    "spk2utt out of date": (dict(spk2utt="spk1 spk1-a\nspk2 spk2-c\n"),
                            "spk2utt: does not match utt2spk: expanding it gives 'spk2-c spk2' at position 2, "
                            "utt2spk has 'spk1-b spk1'"),
    "missing spk2utt": (dict(spk2utt=None), "spk2utt: file not found. Fix: utils/utt2spk_to_spk2utt.pl"),
    "empty utt2spk": (dict(utt2spk="", spk2utt=""), "utt2spk: is empty"),
    "invalid UTF-8": (dict(text=b"spk1-a HELLO\nspk1-b caf\xe9\nspk2-c X\n"),
                      "text:2: invalid UTF-8 byte 0xe9 at column 11"),
    "no-break space in text": (dict(text="spk1-a HELLO\u00a0WORLD\nspk1-b A\nspk2-c B\n"),
                               "text: 1 line(s) with Unicode whitespace other than space or tab; first: line 1 "
                               "column 13: U+00A0 (NO-BREAK SPACE)"),
    "zero-width space in text": (dict(text="spk1-a A\nspk1-b B\u200bC\nspk2-c D\n"),
                                 "text: 1 line(s) with non-printable characters; first: line 2 column 9: U+200B "
                                 "(ZERO WIDTH SPACE)"),
    "sentence marker in text": (dict(text="spk1-a <s> HELLO\nspk1-b A\nspk2-c B\n"),
                                "text:1: key 'spk1-a': 1 forbidden word(s) <s>/</s>/#0; first: '<s>'"),
    "tilde in wav.scp": (dict(wav_scp="spk1-a ~/a.wav\nspk1-b /b\nspk2-c /c\n"),
                         "wav.scp:1: key 'spk1-a': 1 value(s) start with '~'"),
    "missing wav.scp": (dict(wav_scp=None), "wav.scp: file not found"),
    "bad utt2dur": (dict(utt2dur="spk1-a 1.5\nspk1-b 0\nspk2-c x\n"),
                    "utt2dur:2: key 'spk1-b': 2 line(s) with a bad value; first: '0' is not > 0"),
    "windows line endings": (dict(utt2spk="spk1-a spk1\r\nspk1-b spk1\r\nspk2-c spk2\r\n"),
                             "utt2spk:1: 3 line(s) end with CR (Windows line endings)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_case_fails_naming_the_file(tmp_path, case):
    changes, expected = MALFORMED[case]
    directory = make(tmp_path, **changes)
    found = problems(directory)
    assert any(expected in p for p in found), found
    result = run_validate(directory)
    assert result.returncode == 1
    assert f"validate_data_dir.sh: ERROR: {directory}/" + expected.split(":")[0] in result.stderr
    assert result.stderr.rstrip().endswith("problem(s)")


def test_non_print_allows_invisible_characters_but_not_odd_whitespace(tmp_path):
    directory = make(tmp_path, text="spk1-a A\u200bB\nspk1-b B\nspk2-c \u0645\u06cc\u200c\u062e\u0648\u0627\u0645\n")
    assert len(problems(directory)) == 1  # ZWSP; the zero-width non-joiner of the Persian word is fine
    assert problems(directory, non_print=True) == []
    assert run_validate("--non-print", directory).returncode == 0


def test_switches_relax_requirements(tmp_path):
    directory = make(tmp_path, text=None, wav_scp=None,
                     utt2spk="b-1 b\na-1 a\n", spk2utt="b b-1\na a-1\n")
    found = problems(directory)
    assert any("text: file not found" in p for p in found) and any("wav.scp: file not found" in p for p in found)
    assert problems(make(tmp_path, "e", text=None, wav_scp=None), no_text=True, no_wav=True) == []
    result = run_validate("--no-text", "--no-wav", "--bogus", directory)
    assert result.returncode == 1 and "invalid option --bogus" in result.stderr
    result = run_validate(directory, "extra")
    assert result.returncode == 1 and "expected 1 positional argument(s), got 2" in result.stderr


def test_one_speaker_is_only_a_warning(tmp_path):
    directory = make(tmp_path, utt2spk="x-a x\nx-b x\nx-c x\n", spk2utt="x x-a x-b x-c\n",
                     text="x-a A\nx-b B\nx-c C\n", wav_scp="x-a /a\nx-b /b\nx-c /c\n")
    report = validate_data_dir(directory, progress=False)
    assert report.ok and "all 3 utterances have the same speaker" in report.warnings[0]


def test_segments_checks(tmp_path):
    directory = make(tmp_path, segments="spk1-a r1 0.0 1.0\nspk1-b r1 2.0 1.5\nspk2-c r9 0 1\n",
                     wav_scp="r1 /c/r1.wav\nr2 /c/r2.wav\n", reco2file_and_channel="r1 r1 A\nr2 r2 B\n")
    found = problems(directory)
    assert any("segments:2: key 'spk1-b': 1 line(s) with a bad value; first: end 1.5 is not greater than start 2.0"
               in p for p in found), found
    assert any("segments:3: key 'spk2-c': 1 segment(s) name a recording that is not in wav.scp (first: 'r9')" in p
               for p in found)
    assert any("wav.scp:2: key 'r2': 1 recording(s) that no segment uses (first: 'r2')" in p for p in found)
    assert any("reco2file_and_channel: keys differ from the recordings of segments" in p for p in found)


def test_stale_lengths_are_detected_after_wav_scp_changes(tmp_path):
    from speechdistill.data.datadir import DataDir, wav_fingerprint

    directory = make(tmp_path, utt2num_samples="spk1-a 16000\nspk1-b 8000\nspk2-c 4000\n")
    data = DataDir.load(directory)
    data.tables["utt2wav_hash"] = {u: wav_fingerprint(v) for u, v in data.tables["wav.scp"].items()}
    data.save()
    assert problems(directory) == []
    (directory / "wav.scp").write_text(GOOD["wav.scp"].replace("/c/a.wav", "/c/a2.wav"))
    (stale,) = problems(directory)
    assert "utt2num_samples: stale for 1 utterance(s) (first: 'spk1-a')" in stale
    assert "rerun utils/get_utt2num_samples.sh" in stale


@pytest.fixture
def bad_audio_dir(tmp_path):
    """One utterance per kind of bad audio of the issue, plus two good ones."""
    audio = tmp_path / "audio"
    audio.mkdir()
    x = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    soundfile.write(audio / "good.wav", x, 16000, subtype="PCM_16")
    soundfile.write(audio / "good.flac", x, 16000, subtype="PCM_16")
    soundfile.write(audio / "8k.wav", x[:8000], 8000, subtype="PCM_16")
    soundfile.write(audio / "stereo.wav", np.stack([x, x], 1), 16000, subtype="PCM_16")
    (audio / "empty.wav").write_bytes(b"")
    soundfile.write(audio / "cut.flac", x, 16000, subtype="PCM_16")
    data = (audio / "cut.flac").read_bytes()
    (audio / "cut.flac").write_bytes(data[: len(data) // 2])
    wav = {"s-1good": f"{audio}/good.wav", "s-2pipe": f"cat {audio}/good.flac |", "s-3missing": f"{audio}/nothere.wav",
           "s-4badpipe": "false |", "s-5rate": f"{audio}/8k.wav", "s-6stereo": f"{audio}/stereo.wav",
           "s-7empty": f"{audio}/empty.wav", "s-8cut": f"{audio}/cut.flac"}
    utts = sorted(wav)
    return make(tmp_path, "bad", utt2spk="".join(f"{u} s\n" for u in utts), spk2utt=f"s {' '.join(utts)}\n",
                text=None, wav_scp="".join(f"{u} {wav[u]}\n" for u in utts),
                utt2num_samples="".join(f"{u} {16000 if u != 's-2pipe' else 15999}\n" for u in utts))


def test_check_audio_lists_every_unreadable_utterance_with_its_reason(bad_audio_dir):
    assert problems(bad_audio_dir, no_text=True) == []  # nothing is read without check_audio
    report = validate_data_dir(bad_audio_dir, no_text=True, check_audio=True, progress=False)
    reasons = report.unreadable
    assert sorted(reasons) == ["s-3missing", "s-4badpipe", "s-5rate", "s-6stereo", "s-7empty", "s-8cut"]
    assert "audio file not found" in reasons["s-3missing"]
    assert "pipe command exited with code 1" in reasons["s-4badpipe"]
    assert "sample rate is 8000 Hz, expected 16000 Hz" in reasons["s-5rate"]
    assert "2 channels, expected mono" in reasons["s-6stereo"]
    assert "empty (0 bytes)" in reasons["s-7empty"]
    assert "cannot decode audio" in reasons["s-8cut"]
    assert any("6 of 8 utterance(s) have unreadable audio" in p for p in report.problems)
    assert any("utt2num_samples:2: key 's-2pipe': 1 value(s) differ from the audio (first: 's-2pipe' says 15999, "
               "the audio has 16000 samples)" in p for p in report.problems)
    resampled = validate_data_dir(bad_audio_dir, no_text=True, check_audio=True, resample=True, progress=False)
    assert "s-5rate" not in resampled.unreadable


def test_check_audio_cli_prints_each_unreadable_utterance(bad_audio_dir):
    result = run_validate("--no-text", "--check-audio", "--nj", "2", bad_audio_dir)
    assert result.returncode == 1
    listed = [line.split(": ")[2] for line in result.stderr.splitlines() if ": unreadable: " in line]
    assert listed == ["s-3missing", "s-4badpipe", "s-5rate", "s-6stereo", "s-7empty", "s-8cut"]
