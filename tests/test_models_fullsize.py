"""Full-size shapes against transformers: HuBERT Base, wav2vec 2.0 Large (pre-LN, layer-norm CNN with
bias) and WavLM Base, random weights, short audio; each utterance alone and inside a batch of
unequal lengths must give every hidden state within 1e-4 of transformers run on it alone."""
import pytest
import torch

from speechdistill.models import EncoderConfig, architecture, count_parameters
from test_models_encoder import batch, ours_from_hf
from test_models_support import hf_model, max_diff_per_utterance

torch.set_num_threads(2)

FULL = {
    "hubert_base": ("hubert", {}),
    "wav2vec2_large": ("wav2vec2", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                        intermediate_size=4096, do_stable_layer_norm=True, feat_extract_norm="layer",
                                        conv_bias=True)),
    "wavlm_base": ("wavlm", {}),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_models_match_transformers_alone_and_in_a_batch(name):
    kind, config = FULL[name]
    torch.manual_seed(0)
    reference = hf_model(kind, fast_init=True, **config)
    ours = ours_from_hf(reference)
    expected = architecture(name)
    # same structure as our named architecture (waveform normalisation is a preprocessing choice)
    assert ours.config.replace(normalize_waveform=expected.normalize_waveform, dropout=0.0, attention_dropout=0.0,
                               activation_dropout=0.0, dropout_input=0.0) == \
        expected.replace(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0)
    assert count_parameters(ours) == sum(p.numel() for p in reference.parameters())
    wavs, lengths = batch([16000, 9000], seed=1)
    with torch.no_grad():
        batched = ours(wavs, lengths)
        diffs = max_diff_per_utterance(batched, reference, wavs, lengths)
        assert max(diffs) < 1e-4, diffs
        alone = ours(wavs[1:2, :9000])
        assert max_diff_per_utterance(alone, reference, wavs[1:2, :9000], lengths[1:2])[0] < 1e-4


def test_base_parameter_count_matches_the_published_size():
    # HuBERT Base without pretraining heads: 94.37 M here, 94.68 M in SUPERB tables (with final_proj etc.)
    from speechdistill.models import Encoder
    assert count_parameters(Encoder(EncoderConfig())) == 94_371_712
