"""WER/CER scoring against jiwer (an independent implementation) and hand-computed cases."""
import random

import jiwer
import pytest

from speechdistill.metrics.wer import (CORRECT, DELETION, INSERTION, SUBSTITUTION, ScoringError, align,
                                       format_alignment, results_table, score, score_files, tokenize)


def _jiwer_counts(refs, hyps):
    out = jiwer.process_words(refs, hyps)
    return out.hits, out.substitutions, out.deletions, out.insertions


def _check_alignment_consistent(ref, hyp, alignment):
    """The alignment must spell out both sequences in order."""
    assert [c.ref for c in alignment if c.op != INSERTION] == list(ref)
    assert [c.hyp for c in alignment if c.op != DELETION] == list(hyp)
    for column in alignment:
        if column.op == CORRECT:
            assert column.ref == column.hyp
        if column.op == SUBSTITUTION:
            assert column.ref != column.hyp


@pytest.mark.parametrize("alphabet,max_len", [("ab", 6), ("abcd", 9), ("abcdefgh", 14)])
def test_random_alignments_match_jiwer_counts_exactly(alphabet, max_len):
    rng = random.Random(len(alphabet))
    for _ in range(400):
        ref = [rng.choice(alphabet) for _ in range(rng.randint(0, max_len))]
        hyp = [rng.choice(alphabet) for _ in range(rng.randint(0, max_len))]
        alignment = align(ref, hyp)
        _check_alignment_consistent(ref, hyp, alignment)
        counts = tuple(sum(1 for c in alignment if c.op == op) for op in (CORRECT, SUBSTITUTION, DELETION, INSERTION))
        assert counts == _jiwer_counts([" ".join(ref)], [" ".join(hyp)]), (ref, hyp)


def test_corpus_wer_matches_jiwer_with_missing_and_extra_utterances():
    rng = random.Random(7)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "über", "naïve", "日本語"]
    refs, hyps = {}, {}
    for index in range(60):
        key = f"utt{index:03d}"
        refs[key] = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        if index % 7 != 3:  # some utterances have no hypothesis at all
            hyps[key] = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
    hyps["zz-extra-1"] = "not in the reference"
    hyps["zz-extra-2"] = ""
    report = score(refs, hyps)

    # jiwer on the reference utterances, a missing hypothesis being the empty string
    keys = list(refs)
    hits, subs, dels, ins = _jiwer_counts([refs[k] for k in keys], [hyps.get(k, "") for k in keys])
    assert (report.correct, report.substitutions, report.deletions, report.insertions) == (hits, subs, dels, ins)
    num_words = sum(len(refs[k].split()) for k in keys)
    assert report.num_ref == num_words
    expected_wer = jiwer.wer([refs[k] for k in keys], [hyps.get(k, "") for k in keys])
    assert report.error_rate == pytest.approx(100 * expected_wer, abs=1e-9)
    assert report.missing == [k for k in keys if k not in hyps]
    assert report.extra == ["zz-extra-1", "zz-extra-2"]
    for utterance in report.utterances:
        if utterance.missing:
            assert utterance.count(DELETION) == len(refs[utterance.key].split())
            assert utterance.count(CORRECT) == 0


def test_cer_matches_jiwer_cer_including_spaces_and_unicode():
    refs = {"a": "naïve café", "b": "日本語 テキスト", "c": "hello world", "d": "x"}
    hyps = {"a": "naive  cafe", "b": "日本 テキスト", "c": "helloworld", "d": ""}
    report = score(refs, hyps, unit="char")
    keys = sorted(refs)
    # jiwer counts the single space between words as a character, like our <space> token
    expected = jiwer.cer([refs[k] for k in keys], [" ".join(hyps[k].split()) for k in keys])
    assert report.error_rate == pytest.approx(100 * expected, abs=1e-9)
    chars = jiwer.process_characters([refs[k] for k in keys], [" ".join(hyps[k].split()) for k in keys])
    assert (report.substitutions, report.deletions, report.insertions) == (chars.substitutions, chars.deletions,
                                                                           chars.insertions)


def test_char_tokens_mark_word_boundaries():
    assert tokenize("ab  c", "char") == ["a", "b", "<space>", "c"]
    assert tokenize("  ", "char") == []
    with pytest.raises(ValueError, match="unknown scoring unit"):
        tokenize("a", "phone")


def test_hand_computed_summary_line_and_table_row():
    # ref: 4 + 2 + 0 words. u1: "sat"->"set" (S), "is" inserted (I); u2 missing (2 D); u3 empty ref, 1 I.
    refs = {"u1": "the cat sat on", "u2": "x y", "u3": ""}
    hyps = {"u1": "the cat is set on", "u3": "a"}
    report = score(refs, hyps)
    assert (report.substitutions, report.deletions, report.insertions, report.correct) == (1, 2, 2, 3)
    assert report.summary_line() == "%WER 83.33 [ 5 / 6, 2 ins, 2 del, 1 sub ]"
    assert report.sentence_line() == "%SER 100.00 [ 3 / 3 ]"
    assert report.scored_line() == "Scored 3 sentences, 1 not present in hyp."
    # Corr 3/6, Sub 1/6, Del 2/6, Ins 2/6, Err 5/6, S.Err 3/3
    assert report.table_row("test") == "|test|3|6|50.0|16.7|33.3|33.3|83.3|100.0|"
    table = results_table([("test", report)])
    assert table.splitlines()[0] == "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|"
    assert table.splitlines()[2] == "|test|3|6|50.0|16.7|33.3|33.3|83.3|100.0|"


def test_empty_hypothesis_and_empty_reference_edge_cases():
    only_empty_ref = score({"u": ""}, {"u": ""})
    assert only_empty_ref.errors == 0 and only_empty_ref.error_rate == 0.0
    insertions_only = score({"u": ""}, {"u": "a b"})
    assert insertions_only.insertions == 2 and insertions_only.error_rate == float("inf")
    assert insertions_only.summary_line() == "%WER inf [ 2 / 0, 2 ins, 0 del, 0 sub ]"
    empty_hyp = score({"u": "a b c"}, {"u": ""})
    assert empty_hyp.deletions == 3 and empty_hyp.error_rate == 100.0
    assert empty_hyp.missing == []  # present but empty is not missing


def test_alignment_block_marks_errors_in_columns():
    report = score({"u1": "the cat sat on"}, {"u1": "the cat is set on"})
    block = format_alignment(report.utterances[0])
    assert block.splitlines() == [
        "id: (u1)",
        "Scores: (#C #S #D #I) 3 1 0 1",
        "REF:  the cat ** sat on",
        "HYP:  the cat is set on",
        "Eval:         I  S",
    ]


def test_alignment_columns_line_up_for_wide_unicode():
    report = score({"u": "日本語 です"}, {"u": "です"})
    ref_line, hyp_line = format_alignment(report.utterances[0]).splitlines()[2:4]
    # "日本語" is 6 terminal columns wide; the deletion filler takes the same width
    assert ref_line == "REF:  日本語 です"
    assert hyp_line == "HYP:  ****** です"


def test_result_txt_lists_missing_and_extra(tmp_path):
    ref = tmp_path / "ref"
    hyp = tmp_path / "hyp"
    ref.write_text("a x y\nb p q r\n", encoding="utf-8")
    hyp.write_text("c extra\na x z\n", encoding="utf-8")  # unsorted hypothesis files are fine
    report = score_files(ref, hyp)
    text = report.result_txt(str(ref), str(hyp))
    assert "%WER 80.00 [ 4 / 5, 0 ins, 3 del, 1 sub ]" in text
    assert "1 reference utterance(s) have no hypothesis and were scored as all deletions: b" in text
    assert "1 hypothesis utterance(s) have no reference and were not scored: c" in text
    assert "id: (b)  [no hypothesis: scored as all deletions]" in text


def test_duplicate_key_and_empty_reference_are_errors(tmp_path):
    ref = tmp_path / "ref"
    ref.write_text("a x\na y\n", encoding="utf-8")
    hyp = tmp_path / "hyp"
    hyp.write_text("a x\n", encoding="utf-8")
    with pytest.raises(ScoringError, match=r"ref:2: key 'a': duplicate key"):
        score_files(ref, hyp)
    ref.write_text("", encoding="utf-8")
    with pytest.raises(ScoringError, match="has no utterances"):
        score_files(ref, hyp)


def test_files_with_empty_transcripts(tmp_path):
    ref = tmp_path / "ref"
    hyp = tmp_path / "hyp"
    ref.write_text("u1\nu2 a b\n", encoding="utf-8")  # u1: empty reference line
    hyp.write_text("u1 x\nu2\n", encoding="utf-8")  # u2: empty hypothesis line
    report = score_files(ref, hyp)
    assert (report.insertions, report.deletions, report.num_ref, report.missing) == (1, 2, 2, [])
    assert report.summary_line() == "%WER 150.00 [ 3 / 2, 1 ins, 2 del, 0 sub ]"
    assert report.error_rate == pytest.approx(100 * jiwer.wer(["", "a b"], ["x", ""]))
