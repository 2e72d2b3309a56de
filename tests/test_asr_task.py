"""The ASR task's pieces in-process: config checks, per-utterance fields, CTC feasibility, loss
normalisation, the model directory round trip, and dumped features equal to on-the-fly ones."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import soundfile
import torch
import torch.nn.functional as F

from speechdistill.asr.dump import dump_features
from speechdistill.asr.model import AsrModel, AsrModelError, load_asr_model, read_asr_model_info, save_asr_model
from speechdistill.asr.task import AsrConfig, AsrTask, ctc_infeasible
from speechdistill.asr.upstream import DumpedFeatures, FrozenUpstream, UpstreamError, upstream_fingerprint
from speechdistill.config import ConfigError, load_config
from speechdistill.data.tables import DataDirError
from speechdistill.downstream.asr import BiLstmCtcConfig
from speechdistill.downstream.featurizer import FeaturizerConfig
from speechdistill.downstream.tokenizer import train_char
from speechdistill.train import TrainContext

from test_asr_common import make_data_dir, make_upstream, random_texts


def _context(tmp_path: Path) -> TrainContext:
    return TrainContext(device=torch.device("cpu"), precision="fp32", teacher_precision="fp32", rank=0, world_size=1,
                        local_rank=0, output_dir=tmp_path, seed=0, logger=logging.getLogger("test_asr_task"))


@pytest.fixture
def setup(tmp_path):
    upstream = make_upstream(tmp_path / "upstream")
    data = make_data_dir(tmp_path / "data", random_texts(6, seed=1))
    train_char([line.split(" ", 1)[1] for line in (data / "text").read_text().splitlines()], tmp_path / "tokens")
    return upstream, data, tmp_path / "tokens"


def test_config_refuses_crops_and_missing_inputs(setup):
    upstream, data, tokens = setup
    config = load_config(AsrConfig, overrides={"train_data": str(data), "upstream": str(upstream),
                                               "token_dir": str(tokens)})
    config.validate()
    assert config.max_seconds is None and config.lr == 1e-4 and config.grad_clip == 1.0  # SUPERB defaults
    assert config.downstream.hidden_size == 1024 and config.downstream.num_layers == 2
    with pytest.raises(ConfigError, match="max_seconds.*cut their transcripts"):
        load_config(AsrConfig, overrides={"train_data": "d", "upstream": "u", "token_dir": "t",
                                          "max_seconds": 5.0}).validate()
    with pytest.raises(ConfigError, match="--upstream"):
        load_config(AsrConfig, overrides={"train_data": "d", "token_dir": "t"}).validate()
    with pytest.raises(ConfigError, match="--token-dir"):
        load_config(AsrConfig, overrides={"train_data": "d", "upstream": "u"}).validate()
    with pytest.raises(ConfigError, match="unknown option '--downstream.hiden_size'; did you mean "
                                          "'--downstream.hidden_size'"):
        load_config(AsrConfig, overrides={"downstream": {"hiden_size": 3}})


def test_item_fields_hold_token_ids_and_transcripts(setup, tmp_path):
    upstream, data, tokens = setup
    task = AsrTask(load_config(AsrConfig, overrides={"train_data": str(data), "upstream": str(upstream),
                                                     "token_dir": str(tokens)}))
    fields = task.item_fields(data)
    tokenizer = task.tokenizer
    for key, text in fields["text"].items():
        ids = fields["tokens"][key]
        # '|' between words, one id per letter
        assert len(ids) == len(text.replace(" ", "")) + len(text.split()) - 1
        assert tokenizer.decode(ids) == text
    # a transcript missing from text is named with the file and the fix
    lines = (data / "text").read_text().splitlines()
    (data / "text").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataDirError, match=r"text.*1 utterance\(s\) of the data dir have no transcript.*"
                                           + lines[0].split()[0]):
        task.item_fields(data)


def test_ctc_infeasible_counts_blanks_needed_between_repeats():
    targets = torch.tensor([[3, 3, 4, -1], [3, 4, 5, 6], [5, 5, 5, 5], [7, -1, -1, -1]]).clamp(min=0)
    lengths = torch.tensor([3, 4, 4, 1])
    # needed frames: 3 + 1 repeat = 4; 4; 4 + 3 repeats = 7; 1
    frames = torch.tensor([3, 4, 7, 0])
    assert ctc_infeasible(frames, targets, lengths).tolist() == [True, False, False, True]
    assert ctc_infeasible(frames + 1, targets, lengths).tolist() == [False, False, False, False]


def test_train_step_loss_is_the_mean_utterance_nll_with_count_utterances(setup, tmp_path):
    upstream, data, tokens = setup
    config = load_config(AsrConfig, overrides={
        "train_data": str(data), "upstream": str(upstream), "token_dir": str(tokens),
        "downstream": {"hidden_size": 16, "projection_size": None, "spec_augment": None, "dropout": 0.0}})
    task = AsrTask(config)
    task.setup(_context(tmp_path))
    torch.manual_seed(0)
    model = task.model()
    fields = task.item_fields(data)
    keys = sorted(fields["text"])[:3]
    wavs_np = [soundfile.read(str(data / "wav" / f"{k}.wav"), dtype="float32")[0] for k in keys]
    lengths = torch.tensor([len(w) for w in wavs_np])
    wavs = torch.zeros(3, int(lengths.max()))
    for row, w in enumerate(wavs_np):
        wavs[row, :len(w)] = torch.from_numpy(w)
    token_lists = [fields["tokens"][k] for k in keys]
    tokens_padded = torch.full((3, max(map(len, token_lists))), -1)
    for row, ids in enumerate(token_lists):
        tokens_padded[row, :len(ids)] = torch.tensor(ids)
    batch = {"wavs": wavs, "lengths": lengths, "keys": keys, "tokens": tokens_padded,
             "tokens_lengths": torch.tensor([len(t) for t in token_lists]), "text": [fields["text"][k] for k in keys]}
    model.eval()  # no dropout: the reference below runs the same forward
    out = task.train_step(model, batch, 0)
    assert out.count == 3
    # reference: each utterance alone through upstream and model, its CTC NLL, averaged over utterances
    frozen = FrozenUpstream(upstream)
    nll, hypotheses = [], []
    for row in range(3):
        states, frames = frozen(wavs[row:row + 1, :lengths[row]], lengths[row:row + 1], model.selected_layers,
                                contextlib.nullcontext())
        log_probs, frames = model(states, frames)
        nll.append(F.ctc_loss(log_probs[0], torch.tensor(token_lists[row]), frames, torch.tensor([len(token_lists[row])]),
                              reduction="sum"))
        # best path written out: argmax per frame, repeats merged, blanks (id 0) dropped
        best = log_probs[0, :int(frames[0])].argmax(-1).tolist()
        ids = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
        hypotheses.append(task.tokenizer.decode(ids))
    assert torch.allclose(out.loss, torch.stack(nll).mean(), rtol=1e-4)
    assert float(out.terms["infeasible"]) == 0.0
    metrics = task.valid_step(model, batch)
    assert set(metrics) == {"loss", "infeasible", "cer", "wer"}
    assert torch.allclose(torch.as_tensor(metrics["loss"]), torch.stack(nll).mean(), rtol=1e-4)
    import jiwer
    references = [fields["text"][k] for k in keys]
    assert metrics["wer"] == pytest.approx(100 * jiwer.wer(references, hypotheses), abs=1e-6)
    assert metrics["cer"] == pytest.approx(100 * jiwer.cer(references, hypotheses), abs=1e-6)


def test_model_dir_round_trip_and_errors(setup, tmp_path):
    upstream, _, tokens = setup
    torch.manual_seed(3)
    model = AsrModel(3, 32, 7, FeaturizerConfig(), BiLstmCtcConfig(hidden_size=8, projection_size=4,
                                                                    spec_augment=None)).eval()
    with torch.no_grad():
        model.featurizer.weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out = save_asr_model(model, tokens, tmp_path / "asr_model", token_type="char", upstream=str(upstream),
                         upstream_fingerprint=upstream_fingerprint(upstream))
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "tokens.txt"]
    loaded, tokenizer, info = load_asr_model(out)
    assert tokenizer.vocab_size == 7 and info.upstream == str(upstream.resolve())
    assert info.upstream_fingerprint == upstream_fingerprint(upstream)
    states = [torch.randn(2, 11, 32) for _ in range(3)]
    lengths = torch.tensor([11, 6])
    with torch.no_grad():
        assert torch.equal(model(states, lengths)[0], loaded(states, lengths)[0])
    # a token list that does not match the model, a damaged config, a missing dir
    (out / "tokens.txt").write_text("<blank>\n<unk>\n|\nA\n<sos/eos>\n")
    with pytest.raises(AsrModelError, match="5 tokens, but the model was trained with 7"):
        load_asr_model(out)
    (out / "config.yaml").write_text("format: speechdistill-asr\nvocab_size: 7\n")
    with pytest.raises(AsrModelError, match="key 'num_hidden_states' is missing"):
        read_asr_model_info(out)
    with pytest.raises(AsrModelError, match="not an ASR model dir"):
        read_asr_model_info(tmp_path / "nowhere")


def test_upstream_fingerprint_changes_with_the_weights(setup, tmp_path):
    upstream, _, _ = setup
    other = make_upstream(tmp_path / "other", seed=1)
    assert upstream_fingerprint(upstream) != upstream_fingerprint(other)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in upstream.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert upstream_fingerprint(copy) == upstream_fingerprint(upstream)
    with pytest.raises(UpstreamError, match="upstream model not found"):
        upstream_fingerprint(tmp_path / "missing")


def test_dumped_features_equal_the_upstream_output(setup, tmp_path):
    upstream, data, _ = setup
    result = dump_features(upstream, data, tmp_path / "dump", layers=[0, -1], batch_seconds=3.0, num_workers=0)
    assert result.num_dumped == 6 and not result.up_to_date
    scp_keys = [line.split()[0] for line in (tmp_path / "dump/feats.scp").read_text().splitlines()]
    assert scp_keys == sorted(scp_keys, key=str.encode)
    dump = DumpedFeatures(tmp_path / "dump")
    assert dump.layers == [0, 2]
    dump.check_upstream(upstream)
    with pytest.raises(UpstreamError, match=r"reads hidden states \[1\] but the dump holds only \[0, 2\]"):
        dump.check_layers([1])
    with pytest.raises(UpstreamError, match="dumped from"):
        dump.check_upstream(make_upstream(tmp_path / "other", seed=5))
    keys = scp_keys[:4]
    states, frames = dump(keys, torch.device("cpu"))
    assert states[1] is None
    frozen = FrozenUpstream(upstream)
    for row, key in enumerate(keys):
        wav = torch.from_numpy(soundfile.read(str(data / "wav" / f"{key}.wav"), dtype="float32")[0])[None]
        alone, alone_frames = frozen(wav, torch.tensor([wav.shape[1]]), [0, 2], contextlib.nullcontext())
        assert int(frames[row]) == int(alone_frames[0])
        for index in (0, 2):
            assert torch.allclose(states[index][row, :frames[row]], alone[index][0], atol=1e-5)
            assert torch.all(states[index][row, frames[row]:] == 0)
    again = dump_features(upstream, data, tmp_path / "dump", layers=[0, 2], num_workers=0)
    assert again.up_to_date
