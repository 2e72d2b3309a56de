# Thin wrappers over tools/ and egs/. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTEST_ARGS ?=
METHOD ?= distilhubert
DEMO_ARGS ?=
DEMO_SV_ARGS ?=

.PHONY: install test check demo demo-sv

install:
	tools/install.sh

test: install
	tools/venv/bin/python -m pytest -q --durations=20 tests $(PYTEST_ARGS)

# The everyday tier: everything but the end-to-end, multi-process and real-Slurm modules (tests/conftest.py).
check: install
	tools/venv/bin/python -m pytest -q -m "not slow" --durations=10 tests $(PYTEST_ARGS)

# The LibriSpeech distillation demo: mini corpora, a teacher trained from scratch, the METHOD preset
# (egs/librispeech/distill/conf/<METHOD>.yaml) scaled to it, ASR probes; results in
# egs/librispeech/distill/exp/demo/RESULTS.md. DEMO_ARGS: more run.sh options, e.g. "--stage 3".
demo: install
	@test -f egs/librispeech/distill/conf/$(METHOD).yaml || { echo "make demo: no method preset" \
	    "egs/librispeech/distill/conf/$(METHOD).yaml; pick METHOD from:" \
	    $$(cd egs/librispeech/distill/conf && ls *.yaml | grep -v -e '^asr_' -e '^augment_' -e '_final.yaml' \
	    | sed 's/.yaml$$//'); exit 1; }
	cd egs/librispeech/distill && ./run.sh --demo true --distill_config conf/$(METHOD).yaml $(DEMO_ARGS)

# The VoxCeleb speaker-verification demo: mini VoxCeleb, a tiny HuBERT teacher trained from scratch, the
# OS-KDFT student against a randomly initialised one and the fbank / frozen-teacher ECAPA baselines; EER and
# minDCF in egs/voxceleb/oskdft/exp/demo/RESULTS.md, DET curves in det.png. DEMO_SV_ARGS: more local/demo.sh
# options, e.g. "--systems 'oskdft random_student'".
demo-sv: install
	cd egs/voxceleb/oskdft && local/demo.sh $(DEMO_SV_ARGS)
