"""The score_wer entry point, run as a real subprocess."""
import subprocess
import sys

import jiwer


def run(*args):
    return subprocess.run([sys.executable, "-m", "speechdistill.bin.score_wer", *map(str, args)],
                          capture_output=True, text=True)


def test_prints_kaldi_lines_and_reports_missing_and_extra(tmp_path):
    ref = tmp_path / "text"
    hyp = tmp_path / "hyp"
    ref.write_text("u1 THE CAT SAT\nu2 A DOG\nu3 HELLO WORLD AGAIN\n", encoding="utf-8")
    hyp.write_text("u1 THE BAT SAT DOWN\nu3 HELLO\nu9 NOT SCORED\n", encoding="utf-8")
    out = run("--ref", ref, "--hyp", hyp, "--result-txt", tmp_path / "result.txt")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # u1: 1 sub + 1 ins; u2 missing: 2 del; u3: 2 del -> 6 errors / 8 words
    expected = jiwer.wer(["THE CAT SAT", "A DOG", "HELLO WORLD AGAIN"], ["THE BAT SAT DOWN", "", "HELLO"])
    assert lines[0] == f"%WER {100 * expected:.2f} [ 6 / 8, 1 ins, 4 del, 1 sub ]"
    assert lines[0] == "%WER 75.00 [ 6 / 8, 1 ins, 4 del, 1 sub ]"
    assert lines[1] == "%SER 100.00 [ 3 / 3 ]"
    assert lines[2] == "Scored 3 sentences, 1 not present in hyp."
    assert "scored as all deletions: u2" in lines[3]
    assert "not scored: u9" in lines[4]
    result = (tmp_path / "result.txt").read_text(encoding="utf-8")
    assert "REF:  THE CAT SAT ****" in result
    assert "HYP:  THE BAT SAT DOWN" in result
    assert "Eval:     S       I" in result


def test_cer_flag(tmp_path):
    ref = tmp_path / "ref"
    hyp = tmp_path / "hyp"
    ref.write_text("u1 ab cd\n", encoding="utf-8")
    hyp.write_text("u1 abcd\n", encoding="utf-8")
    out = run("--ref", ref, "--hyp", hyp, "--cer")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "%CER 20.00 [ 1 / 5, 0 ins, 1 del, 0 sub ]"


def test_user_errors_give_one_line_and_exit_1(tmp_path):
    ref = tmp_path / "ref"
    ref.write_text("u1 a\nu1 b\n", encoding="utf-8")
    out = run("--ref", ref, "--hyp", tmp_path / "missing")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "duplicate key" in out.stderr and "u1" in out.stderr

    ref.write_text("u1 a\n", encoding="utf-8")
    out = run("--ref", ref, "--hyp", tmp_path / "missing")
    assert out.returncode == 1 and "file not found" in out.stderr and "missing" in out.stderr
    assert out.stdout == ""


def test_help_has_no_side_effects(tmp_path):
    out = subprocess.run([sys.executable, "-m", "speechdistill.bin.score_wer", "--help"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0 and "--result-txt" in out.stdout
    assert list(tmp_path.iterdir()) == []
