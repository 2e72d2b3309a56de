"""Speaker verification: OS-KDFT students, ECAPA-TDNN baselines, embedding extraction, results.

* :mod:`.config` -- ``SvConfig`` (trainer keys + the axes of a system, ``system`` as their shorthand);
* :mod:`.task` -- ``SvTask``, trained by ``speechdistill.train.Trainer`` (``bin/sv_train.py``);
* :mod:`.model` -- the trainable model, ``SpeakerEmbedder`` and its model directory;
* :mod:`.extract` -- embeddings of a data dir to kaldiio ``xvector.ark/scp`` (``bin/sv_extract.py``);
* :mod:`.results` -- ``RESULTS.md`` with EER/minDCF per trial list (``bin/sv_results.py``).
"""
