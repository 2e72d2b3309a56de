"""Char and SentencePiece tokenizers: ESPnet token-list order, encode/decode both ways, errors."""
import sentencepiece
import pytest

from speechdistill.downstream.tokenizer import (BLANK, SOS_EOS, UNK, BpeTokenizer, CharTokenizer, TokenizerError,
                                                build_tokenizer, load_tokenizer, train_bpe)

TEXT = [
    "HE HOPED THERE WOULD BE STEW FOR DINNER",
    "TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT MUTTON PIECES",
    "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE",
    "THE SQUALID QUARTER OF THE BROTHELS",
    "HELLO BERTIE ANY GOOD IN YOUR MIND",
    "NUMBER TEN FRESH NELLY IS WAITING ON YOU GOOD NIGHT HUSBAND",
    "THE MUSIC CAME NEARER AND HE RECALLED THE WORDS",
    "IT'S A LONG WAY TO TIPPERARY",
] * 20


def make_data_dir(tmp_path, lines):
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "text").write_text("".join(f"utt{i:04d} {line}\n" for i, line in enumerate(lines)), encoding="utf-8")
    return data


def test_char_token_list_order_and_round_trip(tmp_path):
    data = make_data_dir(tmp_path, ["AB BA", "CAB", "A'B"])
    tokenizer = build_tokenizer("char", data, tmp_path / "char")
    # counts: A 4, B 4, C 1, ' 1 -> frequency first, then code point (' < C, A < B)
    assert (tmp_path / "char" / "tokens.txt").read_text() == "<blank>\n<unk>\n|\nA\nB\n'\nC\n<sos/eos>\n"
    assert tokenizer.encode("AB  CA") == [3, 4, 2, 6, 3]
    assert tokenizer.encode("AXB") == [3, 1, 4]  # unseen character -> <unk>
    assert tokenizer.decode([3, 4, 2, 6, 3]) == "AB CA"
    # CTC output with blanks and <sos/eos> around: both dropped
    assert tokenizer.decode([0, 3, 0, 2, 2, 4, 7]) == "A B"
    assert tokenizer.decode([3, 1, 4]) == "A⁇B"
    loaded = load_tokenizer(tmp_path / "char")
    assert isinstance(loaded, CharTokenizer) and loaded.tokens == tokenizer.tokens
    assert loaded.blank_id == 0 and loaded.vocab_size == 8


def test_char_refuses_the_separator_in_text(tmp_path):
    data = make_data_dir(tmp_path, ["A|B"])
    with pytest.raises(TokenizerError, match=r"contains '\|'"):
        build_tokenizer("char", data, tmp_path / "char")


def test_bpe_files_and_espnet_token_order(tmp_path):
    data = make_data_dir(tmp_path, TEXT)
    tokenizer = build_tokenizer("bpe", data, tmp_path / "bpe_unigram60", vocab_size=60)
    assert isinstance(tokenizer, BpeTokenizer)
    assert sorted(p.name for p in (tmp_path / "bpe_unigram60").iterdir()) == ["bpe.model", "tokens.txt"]
    tokens = (tmp_path / "bpe_unigram60" / "tokens.txt").read_text(encoding="utf-8").splitlines()
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "bpe_unigram60" / "bpe.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert pieces[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens == [BLANK, UNK] + pieces[3:] + [SOS_EOS]
    assert len(tokens) == 60
    for line in TEXT[:9]:
        ids = tokenizer.encode(line)
        assert [tokens[i] for i in ids] == processor.encode(line, out_type=str)
        assert tokenizer.decode(ids) == line
        # CTC-style output: blanks interleaved
        assert tokenizer.decode([x for i in ids for x in (0, i)]) == line


def test_bpe_model_type_option_and_reload(tmp_path):
    tokenizer = train_bpe(TEXT, tmp_path / "bpe", vocab_size=50, model_type="bpe")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "bpe" / "bpe.model"))
    assert processor.get_piece_size() == 50
    reloaded = load_tokenizer(tmp_path / "bpe")
    assert isinstance(reloaded, BpeTokenizer) and reloaded.tokens == tokenizer.tokens
    assert reloaded.encode(TEXT[0]) == tokenizer.encode(TEXT[0])


def test_bpe_vocabulary_too_large_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="Fix: lower the vocabulary size"):
        train_bpe(["A TINY TEXT"], tmp_path / "bpe", vocab_size=5000)
    assert not (tmp_path / "bpe" / "bpe.model").exists()
    assert list((tmp_path / "bpe").iterdir()) == []  # the temporary work dir is gone


def test_broken_token_lists_are_rejected(tmp_path):
    directory = tmp_path / "tok"
    with pytest.raises(TokenizerError, match="token list not found"):
        load_tokenizer(directory)
    directory.mkdir()
    (directory / "tokens.txt").write_text("<unk>\n<blank>\n|\nA\n<sos/eos>\n")
    with pytest.raises(TokenizerError, match="'<blank>' first"):
        load_tokenizer(directory)
    (directory / "tokens.txt").write_text("<blank>\n<unk>\nA\nB\n<sos/eos>\n")
    with pytest.raises(TokenizerError, match="word separator"):
        load_tokenizer(directory)
    (directory / "tokens.txt").write_text("<blank>\n<unk>\n|\nA\nA\n<sos/eos>\n")
    with pytest.raises(TokenizerError, match="'A' appears more than once"):
        load_tokenizer(directory)
    with pytest.raises(TokenizerError, match="unknown token type"):
        build_tokenizer("word", make_data_dir(tmp_path, ["A"]), directory)
