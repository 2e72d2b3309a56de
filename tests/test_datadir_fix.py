"""fix_data_dir: the library and utils/fix_data_dir.sh on broken data dirs."""
import subprocess
from pathlib import Path

import pytest

from speechdistill.data.fix import fix_data_dir
from speechdistill.data.tables import DataDirError
from speechdistill.data.validate import validate_data_dir

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "egs" / "TEMPLATE" / "utils" / "fix_data_dir.sh"


def write_dir(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def run_fix(*args):
    return subprocess.run([str(FIX), *map(str, args)], capture_output=True, text=True, timeout=60)


BROKEN = {
    # unsorted, a duplicate key, no final newline, one utterance missing from text, one from wav.scp
    "utt2spk": "b-2 b\na-1 a\na-2 a\nb-1 b\nc-1 c\n",
    "text": "a-1 ONE\nb-2 TWO\na-1 ONE AGAIN\nb-1 THREE\nc-1 FOUR",
    "wav.scp": "c-1 /w/c1.wav\na-1 /w/a1.wav\nb-1 /w/b1.wav\nb-2 /w/b2.wav\n",
    "utt2num_samples": "a-1 100\na-2 200\nb-1 0\nb-2 400\nc-1 500\n",
    "spk2gender": "a f\nb m\nc f\nd m\n",
}


def test_fix_keeps_utterances_present_in_every_file_and_says_which_removed_them(tmp_path):
    directory = write_dir(tmp_path / "d", BROKEN)
    result = run_fix(directory)
    assert result.returncode == 0, result.stderr
    # a-2: missing from text and wav.scp; b-1: utt2num_samples 0
    assert (directory / "utt2spk").read_text() == "a-1 a\nb-2 b\nc-1 c\n"
    assert (directory / "spk2utt").read_text() == "a a-1\nb b-2\nc c-1\n"
    assert (directory / "text").read_text() == "a-1 ONE\nb-2 TWO\nc-1 FOUR\n"
    assert (directory / "wav.scp").read_text() == "a-1 /w/a1.wav\nb-2 /w/b2.wav\nc-1 /w/c1.wav\n"
    assert (directory / "utt2num_samples").read_text() == "a-1 100\nb-2 400\nc-1 500\n"
    assert (directory / "spk2gender").read_text() == "a f\nb m\nc f\n"
    err = result.stderr
    assert "text: 1 repeated key(s); kept the first line of each (first: 'a-1' on lines 1 and 3, kept line 1)" in err
    assert "d/text: added the missing final newline" in err and "d/utt2spk: was not in C-locale byte order" in err
    assert ("kept 3 utterances out of 5 (missing from text: 1, wav.scp: 1, utt2num_samples: 1; text removed the "
            "most)") in err
    assert f"old files are kept in {directory}/.backup" in err
    assert (directory / ".backup/text").read_text() == BROKEN["text"]
    assert validate_data_dir(directory).ok


def test_no_utterance_left_fails_and_changes_nothing(tmp_path):
    directory = write_dir(tmp_path / "d", {"utt2spk": "a-1 a\na-2 a\n", "text": "b-1 X\nb-2 Y\n",
                                           "wav.scp": "a-1 /x\na-2 /y\n"})
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    result = run_fix(directory)
    assert result.returncode == 1
    assert "no utterances remained: not proceeding further (text removed the most (2 of 2)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("fix_data_dir.sh: ERROR: ")  # one line, no traceback
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_ids_joined_with_underscore_cannot_be_fixed_automatically(tmp_path):
    directory = write_dir(tmp_path / "d", {"utt2spk": "1_2 1\n13_1 13\n1_4 1\n"})
    with pytest.raises(DataDirError, match=r"cannot be sorted by utterance and by speaker at once: '13_1 13' comes "
                                           r"before '1_2 1'.*followed by '-'"):
        fix_data_dir(directory)
    assert (directory / "utt2spk").read_text() == "1_2 1\n13_1 13\n1_4 1\n"


def test_segments_and_recordings_are_filtered_together(tmp_path):
    directory = write_dir(tmp_path / "d", {
        "utt2spk": "s-a s\ns-b s\ns-c s\n",
        "segments": "s-a r1 0 1\ns-b r2 0 1\ns-c r3 0 1\n",
        "wav.scp": "r1 /r1.wav\nr2 /r2.wav\nr4 /r4.wav\n",
        "reco2dur": "r1 5\nr2 6\nr3 7\nr4 8\n"})
    report = fix_data_dir(directory)
    assert (report.total, report.kept, report.worst_file) == (3, 2, "segments")
    assert (directory / "segments").read_text() == "s-a r1 0 1\ns-b r2 0 1\n"
    assert (directory / "wav.scp").read_text() == "r1 /r1.wav\nr2 /r2.wav\n"
    assert (directory / "reco2dur").read_text() == "r1 5\nr2 6\n"


def test_extra_files_accumulate_across_repeated_options(tmp_path):
    directory = write_dir(tmp_path / "d", {"utt2spk": "s-a s\ns-b s\n", "text": "s-a A\n",
                                           "utt2emotion": "s-a happy\ns-b sad\n", "utt2age": "s-a 3\ns-b 4\n",
                                           "spk2accent": "s x\nt y\n"})
    result = run_fix("--utt-extra-files", "utt2emotion", "--utt_extra_files", "utt2age", "--spk-extra-files",
                     "spk2accent", directory)
    assert result.returncode == 0, result.stderr
    assert (directory / "utt2emotion").read_text() == "s-a happy\n"
    assert (directory / "utt2age").read_text() == "s-a 3\n"
    assert (directory / "spk2accent").read_text() == "s x\n"


def test_missing_utt2spk(tmp_path):
    result = run_fix(write_dir(tmp_path / "d", {"text": "a X\n"}))
    assert result.returncode == 1 and "utt2spk: file not found" in result.stderr
