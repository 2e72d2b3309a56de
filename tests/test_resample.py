import numpy as np
import pytest

from speechdistill.data.resample import resample


@pytest.mark.parametrize("orig,new", [(22050, 16000), (8000, 16000), (48000, 16000), (44100, 16000)])
def test_resampled_sine_matches_analytic(orig, new):
    freq = 440.0
    x = np.sin(2 * np.pi * freq * np.arange(orig) / orig).astype(np.float32)
    y = resample(x, orig, new)
    assert len(y) == int(np.ceil(len(x) * new / orig))
    ref = np.sin(2 * np.pi * freq * np.arange(len(y)) / new)
    edge = new // 50
    assert np.abs(y[edge:-edge] - ref[edge:-edge]).max() < 1e-3


def test_downsampling_removes_content_above_new_nyquist():
    x = np.sin(2 * np.pi * 7000 * np.arange(16000) / 16000).astype(np.float32)
    y = resample(x, 16000, 8000)  # 7 kHz is above the 4 kHz Nyquist of the output
    assert np.abs(y[100:-100]).max() < 1e-3


def test_identity_rate_returns_input():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
