"""Downstream building blocks: featurizer (weighted layer sum), BiLSTM-CTC ASR, tokenizers, CTC
decoding, ECAPA-TDNN and the mean+std back-end, log-mel fbank, and SV scoring back-ends.

Names are imported on first use, so that numpy-only users (``downstream.scoring`` in the
scoring entry points) do not pay for importing torch.
"""
import importlib
from typing import Any

_EXPORTS = {
    "BiLstmCtc": "asr", "BiLstmCtcConfig": "asr", "ctc_loss": "asr",
    "decode": "ctc_decode", "greedy_decode": "ctc_decode", "prefix_beam_search": "ctc_decode",
    "prefix_beam_search_one": "ctc_decode",
    "EcapaConfig": "ecapa", "EcapaTdnn": "ecapa", "MeanStdBackendConfig": "ecapa", "MeanStdLinearBackend": "ecapa",
    "Featurizer": "featurizer", "FeaturizerConfig": "featurizer",
    "Fbank": "frontend", "FbankConfig": "frontend",
    "SpecAugment": "specaugment", "SpecAugmentConfig": "specaugment",
    "BpeTokenizer": "tokenizer", "CharTokenizer": "tokenizer", "Tokenizer": "tokenizer", "TokenizerError": "tokenizer",
    "build_tokenizer": "tokenizer", "load_tokenizer": "tokenizer", "train_bpe": "tokenizer", "train_char": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
