"""The bf16 teacher forward keeps every hidden state within the tolerance the README states.

The teachers are HuBERT Base and WavLM Base shapes with seeded random weights, on a padded
batch of two utterances; fp32 is the reference. The drift measure itself is checked by hand.
"""
import math

import pytest
import torch

from speechdistill.benchmark import accuracy
from speechdistill.benchmark.accuracy import hidden_state_drift
from speechdistill.models import Encoder, architecture

# The bounds the README states (written here, not read from the product, so that loosening them there fails)
MAX_RELATIVE_ERROR = 0.03
MIN_FRAME_COSINE = 0.999


def test_the_product_checks_the_bounds_the_readme_states():
    assert (accuracy.BF16_MAX_RELATIVE_ERROR, accuracy.BF16_MIN_FRAME_COSINE) == (MAX_RELATIVE_ERROR, MIN_FRAME_COSINE)


def test_drift_measure_by_hand():
    reference = [torch.tensor([[[3.0, 4.0], [1.0, 0.0], [9.0, 9.0]]])]
    other = [torch.tensor([[[3.0, 4.5], [1.0, 0.0], [-9.0, 0.0]]])]
    # only the first 2 frames are valid: error vector (0, 0.5, 0, 0), reference norm sqrt(9 + 16 + 1)
    report = hidden_state_drift(reference, other, torch.tensor([2]))
    assert report.relative_errors[0] == pytest.approx(0.5 / math.sqrt(26.0))
    # frame 0: cos((3, 4), (3, 4.5)) = (9 + 18) / (5 * sqrt(29.25)); frame 1 is identical
    assert report.min_cosine == pytest.approx(27.0 / (5.0 * math.sqrt(29.25)))
    assert report.within(max_relative_error=0.1, min_cosine=0.99)
    assert not report.within(max_relative_error=0.05, min_cosine=0.99)
    # counting the third (padded) frame would make it far worse
    assert hidden_state_drift(reference, other).max_relative_error > 0.5


@pytest.mark.parametrize("name", ["hubert_base", "wavlm_base"])
def test_bf16_teacher_hidden_states_within_tolerance(name):
    torch.manual_seed(0)
    teacher = Encoder(architecture(name)).eval()
    generator = torch.Generator().manual_seed(1)
    # 1 s and 0.75 s: drift grows with depth, not length; bf16 is emulated (slow) on CPUs without bf16 units
    wavs = 0.1 * torch.randn(2, 16000, generator=generator)
    lengths = torch.tensor([16000, 12000])
    wavs[1, 12000:] = 0.0
    with torch.inference_mode():
        reference = teacher(wavs, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = teacher(wavs, lengths)
    assert len(reduced.hidden_states) == 13
    report = hidden_state_drift(reference.hidden_states, reduced.hidden_states, reference.lengths)
    assert len(report.relative_errors) == 13
    # bf16 arithmetic really happened (an autocast that changed nothing would pass the bound trivially)
    assert report.max_relative_error > 1e-4
    assert report.max_relative_error <= MAX_RELATIVE_ERROR, report.relative_errors
    assert report.min_cosine >= MIN_FRAME_COSINE, report.min_cosines
