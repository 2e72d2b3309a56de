"""Export to Hugging Face directories that transformers loads and that compute the same hidden states."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from speechdistill.models import Encoder, build_student, save_model
from speechdistill.models.export_hf import ExportError, export_hf
from test_models_encoder import batch
from test_students import randomize_, tiny

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


def transformers_states(directory, wavs):
    from transformers import AutoModel
    model = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        out = model(wavs, output_hidden_states=True)
    states = list(out.hidden_states)
    states[-1] = out.last_hidden_state
    return model, states


@pytest.mark.parametrize("config", [
    tiny(feature_layer_norm=False),  # DistilHuBERT-style body (no feature LayerNorm)
    tiny(num_layers=4, unique_layers=2, mask_embedding=True),  # cyclic sharing, unrolled
    tiny(feature_projection=False, conv_layers=[[16, 10, 5]] + [[16, 3, 2]] * 4 + [[32, 2, 2]] * 2, num_heads=2),
    tiny(relative_position_bias=True, num_buckets=16, max_distance=20, conv_norm="layer", conv_bias=True,
         layer_norm_first=True),
])
def test_exported_directory_loads_in_transformers_with_the_same_hidden_states(tmp_path, config):
    ours = randomize_(Encoder(config)).eval()
    export_hf(ours, tmp_path / "hf")
    wavs = batch([6000])[0]
    model, states = transformers_states(tmp_path / "hf", wavs)
    expected_class = "WavLMModel" if config.relative_position_bias else "HubertModel"
    assert type(model).__name__ == expected_class
    with torch.no_grad():
        out = ours(wavs)
    assert len(states) == len(out.hidden_states)
    for a, b in zip(out.hidden_states, states):
        assert float((a - b).abs().max()) < 1e-4


def test_distilhubert_student_exports_and_structures_hf_cannot_express_are_refused(tmp_path):
    student = build_student("distilhubert").encoder.eval()
    save_model(student, tmp_path / "student")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "speechdistill.bin.export_hf", "--model", str(tmp_path / "student"),
                          "--out", str(tmp_path / "hf")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["architecture"] == "HubertModel"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["feat_proj_layer_norm"] is False and config["num_hidden_layers"] == 2
    wavs = batch([5000])[0]
    _, states = transformers_states(tmp_path / "hf", wavs)
    with torch.no_grad():
        ours = student(wavs).hidden_states
    assert max(float((a - b).abs().max()) for a, b in zip(ours, states)) < 1e-4
    with pytest.raises(ExportError, match="attention-map reuse"):
        export_hf(build_student("armhubert_s").encoder, tmp_path / "arm")
    with pytest.raises(ExportError, match="parallel adapters"):
        export_hf(Encoder(tiny(adapter_dim=4)), tmp_path / "adapter")
    with pytest.raises(ExportError, match="prune"):
        export_hf(Encoder(tiny(prune_heads=True)), tmp_path / "gated")
    assert not (tmp_path / "arm").exists()


def test_model_directories_get_umask_permissions_not_0700(tmp_path):
    """Model dirs are built in a private temporary dir and renamed into place; the result is shared like any
    directory the user makes (a data dir is written the same way, tests/test_datadir.py)."""
    import stat

    old = os.umask(0o022)
    try:
        out = save_model(Encoder(tiny()), tmp_path / "student")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging dir left behind


def test_random_student_skips_only_an_output_of_the_same_seed_newer_than_the_student(tmp_path):
    """bin.random_student --skip-if-current (the recipe's rerun of stage 3): kept when it holds this seed's draw
    of the current student, redrawn for another seed or a retrained student."""
    save_model(Encoder(tiny()), tmp_path / "student")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")

    def draw(seed):
        done = subprocess.run([sys.executable, "-m", "speechdistill.bin.random_student", "--student",
                               str(tmp_path / "student"), "--out", str(tmp_path / "random"), "--seed", str(seed),
                               "--skip-if-current"], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stderr, (tmp_path / "random" / "model.safetensors").read_bytes()

    first, weights0 = draw(0)
    again, same = draw(0)
    assert "kept" not in first and "kept" in again and same == weights0
    other, weights1 = draw(1)
    assert "kept" not in other and weights1 != weights0
    time.sleep(0.01)
    save_model(Encoder(tiny()), tmp_path / "student")  # retrained: newer than the random student
    retrained, _ = draw(1)
    assert "kept" not in retrained
