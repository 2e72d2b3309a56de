"""The ASR probe of a frozen upstream (SUPERB manner): training task, model directory, feature dumps,
noisy test conditions, batched decoding and the RESULTS.md collector.

The building blocks (featurizer, BiLSTM-CTC, tokenizers, CTC decoding) live in
:mod:`speechdistill.downstream`, the scorer in :mod:`speechdistill.metrics.wer`; this package
composes them for ``bin/asr_train``, ``bin/asr_decode``, ``bin/asr_score`` and
``bin/dump_features``.
"""
