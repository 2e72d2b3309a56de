"""speechdistill.data.datadir: DataDir load/save and the operations, on real files in tmp_path."""
import logging

import numpy as np
import pytest
import soundfile

from speechdistill.data.datadir import DataDir, evenly_spaced, utt2spk_to_spk2utt
from speechdistill.data.operations import (combine_data_dirs, copy_data_dir, split_data_dir, split_is_up_to_date,
                                           subset_data_dir, write_split)
from speechdistill.data.lengths import compute_lengths
from speechdistill.data.tables import DataDirError


def write_dir(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def ten_utterances(tmp_path, name="d"):
    """s1 has 4 utterances, s2 has 1, s3 has 5; lengths u-i = 1000 * (10 - i) samples."""
    speakers = ["s1"] * 4 + ["s2"] + ["s3"] * 5
    utts = [f"{s}-u{i}" for i, s in enumerate(speakers)]
    return write_dir(tmp_path / name, {
        "utt2spk": "".join(f"{u} {s}\n" for u, s in zip(utts, speakers)),
        "text": "".join(f"{u} WORD{i}\n" for i, u in enumerate(utts)),
        "wav.scp": "".join(f"{u} /audio/{u}.wav\n" for u in utts),
        "utt2num_samples": "".join(f"{u} {1000 * (10 - i)}\n" for i, u in enumerate(utts)),
        "spk2gender": "s1 f\ns2 m\ns3 f\n",
    }), utts


def test_save_sorts_in_byte_order_whatever_the_input_order(tmp_path):
    data = DataDir({"utt2spk": {"b-1": "b", "B-1": "B", "a_1": "a_", "a-1": "a", "a1": "a1"}})
    data.save(tmp_path / "d")
    # '-' (0x2d) < '1' (0x31) < 'B' (0x42) < '_' (0x5f) < 'a' (0x61): C-locale order, not a locale's
    assert (tmp_path / "d/utt2spk").read_text() == "B-1 B\na-1 a\na1 a1\na_1 a_\nb-1 b\n"
    assert (tmp_path / "d/spk2utt").read_text() == "B B-1\na a-1\na1 a1\na_ a_1\nb b-1\n"


def test_spk2utt_lists_speakers_in_order_of_first_appearance():
    assert utt2spk_to_spk2utt([("u1", "b"), ("u2", "a"), ("u3", "b")]) == {"b": ["u1", "u3"], "a": ["u2"]}


def test_load_reports_file_line_and_key_of_a_bad_table(tmp_path):
    write_dir(tmp_path / "d", {"utt2spk": "a-1 a\nc-1 c\nb-1 b\n"})
    with pytest.raises(DataDirError, match=r"d/utt2spk:3: key 'b-1': not sorted in C-locale byte order"):
        DataDir.load(tmp_path / "d")
    write_dir(tmp_path / "e", {"utt2spk": "a-1 a x\n"})
    with pytest.raises(DataDirError, match=r"e/utt2spk:1: key 'a-1': expected 2 fields, found 3"):
        DataDir.load(tmp_path / "e")
    with pytest.raises(DataDirError, match="not a data directory"):
        DataDir.load(tmp_path)


def test_roundtrip_keeps_known_files_and_drops_unknown_ones(tmp_path):
    src, utts = ten_utterances(tmp_path)
    (src / "frame_shift").write_text("0.01\n")
    (src / "notes.txt").write_text("not part of a data dir\n")
    DataDir.load(src).save(tmp_path / "copy")
    for name in ("utt2spk", "text", "wav.scp", "utt2num_samples", "spk2gender", "frame_shift"):
        assert (tmp_path / "copy" / name).read_bytes() == (src / name).read_bytes()
    assert (tmp_path / "copy/spk2utt").read_text() == (f"s1 {' '.join(utts[:4])}\ns2 {utts[4]}\n"
                                                       f"s3 {' '.join(utts[5:])}\n")
    assert not (tmp_path / "copy/notes.txt").exists()


def test_save_replaces_a_data_dir_but_never_another_directory(tmp_path):
    src, _ = ten_utterances(tmp_path)
    target = write_dir(tmp_path / "old", {"utt2spk": "x-1 x\n", "stale_utt2dur": "x-1 1.0\n"})
    DataDir.load(src).save(target)
    assert not (target / "stale_utt2dur").exists() and (target / "text").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dirs left behind
    precious = write_dir(tmp_path / "precious", {"thesis.tex": "..."})
    with pytest.raises(DataDirError, match="refusing to replace a directory that is not a data dir"):
        DataDir.load(src).save(precious)
    assert (precious / "thesis.tex").read_text() == "..."


def test_filter_follows_speakers_and_recordings_through_segments(tmp_path):
    src = write_dir(tmp_path / "d", {
        "utt2spk": "s1-a s1\ns1-b s1\ns2-c s2\n",
        "segments": "s1-a r1 0 1\ns1-b r2 0 1\ns2-c r2 1 2\n",
        "wav.scp": "r1 /a/r1.wav\nr2 /a/r2.wav\n",
        "reco2dur": "r1 3\nr2 4\n",
        "spk2gender": "s1 m\ns2 f\n"})
    kept = DataDir.load(src).filter_utts(["s2-c"])
    assert kept.tables["wav.scp"] == {"r2": "/a/r2.wav"} and kept.tables["reco2dur"] == {"r2": "4"}
    assert kept.tables["spk2gender"] == {"s2": "f"} and kept.speakers == ["s2"]


def test_evenly_spaced_selection_is_centred_and_deterministic():
    assert evenly_spaced(list(range(10)), 3) == [1, 5, 8]   # (2i+1)*10 // 6
    assert evenly_spaced(list(range(10)), 10) == list(range(10))
    assert evenly_spaced(list(range(7)), 2) == [1, 5]


def test_subset_modes(tmp_path):
    src, utts = ten_utterances(tmp_path)
    data = DataDir.load(src)
    assert subset_data_dir(data, "spaced", 3).utts == [utts[1], utts[5], utts[8]]
    assert subset_data_dir(data, "first", 2).utts == utts[:2]
    assert subset_data_dir(data, "last", 2).utts == utts[-2:]
    assert subset_data_dir(data, "shortest", 3).utts == utts[7:]        # 3000, 2000, 1000 samples
    # per speaker: s1 [u0..u3] -> positions 1, 3; s2 [u4] -> u4; s3 [u5..u9] -> positions 1, 3
    assert subset_data_dir(data, "per-spk", 2).utts == [utts[1], utts[3], utts[4], utts[6], utts[8]]
    assert subset_data_dir(data, "utt-list", ids=[utts[3], "nope"]).utts == [utts[3]]
    spk = subset_data_dir(data, "spk-list", ids=["s2"])
    assert spk.utts == [utts[4]] and spk.tables["spk2gender"] == {"s2": "m"}
    with pytest.raises(DataDirError, match="asked for 11 utterances but the data dir has only 10"):
        subset_data_dir(data, "spaced", 11)


def test_subset_by_speakers_takes_whole_speakers_until_n(tmp_path):
    src, _ = ten_utterances(tmp_path)
    data = DataDir.load(src)
    for n in (1, 4, 5, 6, 10):
        chosen = subset_data_dir(data, "speakers", n)
        counts = {s: len(u) for s, u in chosen.spk2utt().items()}
        assert counts == {s: len(u) for s, u in data.spk2utt().items() if s in counts}  # whole speakers
        assert len(chosen) >= n
        assert any(len(chosen) - c < n for c in counts.values())  # the last speaker added was needed
        assert chosen.utts == subset_data_dir(data, "speakers", n).utts  # seeded: the same every time


def test_copy_with_prefixes_and_utt2uniq(tmp_path):
    src, utts = ten_utterances(tmp_path)
    copy = copy_data_dir(DataDir.load(src), utt_prefix="sp0.9-", spk_prefix="sp0.9-")
    assert copy.utt2spk["sp0.9-s1-u0"] == "sp0.9-s1"
    assert copy.tables["wav.scp"]["sp0.9-s2-u4"] == "/audio/s2-u4.wav"
    assert copy.tables["utt2uniq"]["sp0.9-s3-u9"] == "s3-u9"
    assert copy.tables["spk2gender"] == {"sp0.9-s1": "f", "sp0.9-s2": "m", "sp0.9-s3": "f"}
    again = copy_data_dir(copy, utt_suffix="-x")
    assert again.tables["utt2uniq"]["sp0.9-s1-u0-x"] == "s1-u0"  # an existing utt2uniq keeps its value


def test_copy_keeps_recording_ids_when_there_are_segments(tmp_path):
    src = write_dir(tmp_path / "d", {"utt2spk": "s1-a s1\n", "segments": "s1-a r1 0.5 1.5\n",
                                     "wav.scp": "r1 /a/r1.wav\n", "reco2dur": "r1 3\n"})
    copy = copy_data_dir(DataDir.load(src), utt_prefix="p-", spk_prefix="p-")
    assert copy.tables["segments"] == {"p-s1-a": "r1 0.5 1.5"}
    assert copy.tables["wav.scp"] == {"r1": "/a/r1.wav"} and copy.tables["reco2dur"] == {"r1": "3"}


def test_combine_refuses_duplicate_utterances_and_drops_files_not_everywhere(tmp_path, caplog):
    a, _ = ten_utterances(tmp_path, "a")
    b = write_dir(tmp_path / "b", {"utt2spk": "t1-x t1\n", "wav.scp": "t1-x /audio/x.wav\n", "utt2dur": "t1-x 2.5\n",
                                   "utt2num_samples": "t1-x 40000\n"})
    with caplog.at_level(logging.WARNING, logger="speechdistill.data"):
        combined = combine_data_dirs([DataDir.load(a), DataDir.load(b)])
    assert len(combined) == 11 and combined.tables["utt2num_samples"]["t1-x"] == "40000"
    assert "text" not in combined.tables and "spk2gender" not in combined.tables
    assert "not combining text as it does not exist everywhere" in caplog.text
    with pytest.raises(DataDirError, match=r"utterance id 's1-u0' is in both .*/a and .*/a .*10 duplicate"):
        combine_data_dirs([DataDir.load(a), DataDir.load(a)])


def test_combine_synthesises_segments_and_utt2uniq(tmp_path):
    a = write_dir(tmp_path / "a", {"utt2spk": "s1-a s1\n", "segments": "s1-a r1 0 1\n", "wav.scp": "r1 /r1.wav\n",
                                   "utt2uniq": "s1-a orig\n"})
    b = write_dir(tmp_path / "b", {"utt2spk": "s2-b s2\n", "wav.scp": "s2-b /b.wav\n", "utt2dur": "s2-b 2.25\n"})
    combined = combine_data_dirs([DataDir.load(a), DataDir.load(b)])
    assert combined.tables["segments"] == {"s1-a": "r1 0 1", "s2-b": "s2-b 0 2.2500"}
    assert combined.tables["wav.scp"] == {"r1": "/r1.wav", "s2-b": "/b.wav"}
    assert combined.tables["utt2uniq"] == {"s1-a": "orig", "s2-b": "s2-b"}
    c = write_dir(tmp_path / "c", {"utt2spk": "s1-z s1\n", "wav.scp": "s1-z /z.wav\n", "spk2gender": "s1 m\n"})
    d = write_dir(tmp_path / "e", {"utt2spk": "s1-y s1\n", "wav.scp": "s1-y /y.wav\n", "spk2gender": "s1 f\n"})
    with pytest.raises(DataDirError, match="speaker 's1' has different spk2gender entries"):
        combine_data_dirs([DataDir.load(c), DataDir.load(d)])


def test_split_per_utt_gives_nearly_equal_chunks(tmp_path):
    src, utts = ten_utterances(tmp_path)
    parts = split_data_dir(DataDir.load(src), 3, per_utt=True)
    assert [p.utts for p in parts] == [utts[0:4], utts[4:7], utts[7:10]]


def test_split_by_speaker_keeps_speakers_whole_and_balances(tmp_path):
    src, utts = ten_utterances(tmp_path)
    parts = split_data_dir(DataDir.load(src), 2)
    # speakers s1 (4), s2 (1), s3 (5): the cut after s2 gives 5 + 5
    assert [p.speakers for p in parts] == [["s1", "s2"], ["s3"]]
    assert parts[0].tables["spk2gender"] == {"s1": "f", "s2": "m"}


def test_split_never_leaves_a_part_empty_when_one_speaker_dominates(tmp_path):
    utts = [f"a-{i:02d}" for i in range(10)] + ["b-1", "c-1"]
    data = DataDir({"utt2spk": {u: u.split("-")[0] for u in utts}})
    assert [p.speakers for p in split_data_dir(data, 3)] == [["a"], ["b"], ["c"]]


def test_split_clamps_to_the_number_of_speakers_with_a_warning(tmp_path, caplog):
    src, _ = ten_utterances(tmp_path)
    data = DataDir.load(src)
    with caplog.at_level(logging.WARNING, logger="speechdistill.data"):
        parts = split_data_dir(data, 8)
    assert len(parts) == 3 and [len(p) for p in parts] == [4, 1, 5]
    assert "only 3 speakers: splitting into 3 parts instead of 8 (use nj=3)" in caplog.text
    split_dir = write_split(data, parts)
    assert split_dir == src / "split3" and (split_dir / "2/utt2spk").read_text() == "s2-u4 s2\n"
    assert split_is_up_to_date(src, 3)
    (src / "text").touch()  # an input newer than the parts
    import os
    os.utime(src / "text", (os.path.getmtime(split_dir / "1/utt2spk") + 5,) * 2)
    assert not split_is_up_to_date(src, 3)


def test_lengths_are_measured_then_only_changed_entries_remeasured(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name, n in (("a", 16000), ("b", 8000), ("c", 24000)):
        soundfile.write(audio / f"{name}.wav", np.zeros(n, np.float32), 16000, subtype="PCM_16")
    src = write_dir(tmp_path / "d", {"utt2spk": "s-a s\ns-b s\ns-c s\n",
                                     "wav.scp": "".join(f"s-{x} {audio}/{x}.wav\n" for x in "abc")})
    data = DataDir.load(src)
    report = compute_lengths(data, progress=False)
    assert (report.measured, report.reused, report.failures) == (3, 0, {})
    assert data.tables["utt2num_samples"] == {"s-a": "16000", "s-b": "8000", "s-c": "24000"}
    assert data.tables["utt2dur"] == {"s-a": "1", "s-b": "0.5", "s-c": "1.5"}
    data.save()
    (src / "wav.scp").write_text(f"s-a {audio}/a.wav\ns-b {audio}/c.wav\ns-c {audio}/c.wav\n")
    data = DataDir.load(src)
    report = compute_lengths(data, progress=False)
    assert (report.measured, report.reused) == (1, 2)
    assert data.tables["utt2num_samples"]["s-b"] == "24000"


def test_lengths_with_segments_and_resampling(tmp_path):
    soundfile.write(tmp_path / "r.wav", np.zeros(8000, np.float32), 8000, subtype="PCM_16")
    src = write_dir(tmp_path / "d", {"utt2spk": "s-1 s\ns-2 s\n", "segments": "s-1 r 0 0.25\ns-2 r 0.5 2.0\n",
                                     "wav.scp": f"r {tmp_path}/r.wav\n"})
    data = DataDir.load(src)
    report = compute_lengths(data, progress=False)
    assert set(report.failures) == {"s-1", "s-2"} and "8000 Hz, expected 16000 Hz" in report.failures["s-1"]
    report = compute_lengths(data, resample=True, progress=False)
    # 0.25 s = 2000 samples at 8 kHz -> 4000 at 16 kHz; 0.5 s to the end (1.0 s) = 4000 -> 8000
    assert data.tables["utt2num_samples"] == {"s-1": "4000", "s-2": "8000"}
    assert data.tables["reco2dur"] == {"r": "1"}


def test_written_tables_get_umask_permissions_not_0600(tmp_path):
    import os
    import stat

    from speechdistill.data.tables import write_table

    old = os.umask(0o022)
    try:
        write_table(tmp_path / "utt2spk", {"a-1": "a"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "utt2spk").stat().st_mode) == 0o644
