"""The s3prl export, loaded by the real s3prl package (PyPI, in tools/s3prl: tools/install_s3prl.sh) with its
own ``distiller_local`` upstream, in a separate process; its hidden states are compared with ours."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechdistill.bin import export_s3prl as export_s3prl_cli
from speechdistill.models import save_model
from test_export_onnx import small_student, utterances

REPO = Path(__file__).resolve().parents[1]
S3PRL = REPO / "tools" / "s3prl"

# Runs in a process with s3prl on the path: every checkpoint, each utterance alone -> hidden states.
LOAD_WITH_S3PRL = """
import sys, numpy as np, torch
from s3prl.upstream.distiller.hubconf import distiller_local
wavs = [torch.from_numpy(w) for w in np.load(sys.argv[1]).values()]
results = {}
for c, ckpt in enumerate(sys.argv[3:]):
    upstream = distiller_local(ckpt=ckpt).eval()
    with torch.no_grad():
        for u, wav in enumerate(wavs):
            for i, h in enumerate(upstream([wav])["hidden_states"]):
                results[f"{c}/{u}/{i}"] = h[0].numpy()
np.savez(sys.argv[2], **results)
"""


def s3prl_hidden_states(tmp_path, audio, checkpoints):
    if not (S3PRL / "s3prl").is_dir():
        pytest.skip(f"s3prl is not installed in {S3PRL}: run tools/install.sh (or tools/install_s3prl.sh)")
    np.savez(tmp_path / "wavs.npz", *[w.numpy() for w in audio])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(S3PRL), str(REPO / "src")]), OMP_NUM_THREADS="2")
    run = subprocess.run([sys.executable, "-c", LOAD_WITH_S3PRL, str(tmp_path / "wavs.npz"), str(tmp_path / "out.npz"),
                          *map(str, checkpoints)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Pre-trained weights NOT loaded" not in run.stdout + run.stderr
    return dict(np.load(tmp_path / "out.npz"))


def whole_cnn(layers):
    return layers


def test_s3prl_distiller_loads_the_export_with_our_hidden_states_and_predictions(tmp_path, capsys):
    encoder, heads = small_student("distilhubert", cnn=whole_cnn)  # (the distiller's frames are 320 samples)
    save_model(encoder, tmp_path / "student", heads=heads)
    with_heads, without = tmp_path / "distilhubert.ckpt", tmp_path / "encoder_only.ckpt"
    assert export_s3prl_cli.main([str(tmp_path / "student"), str(with_heads)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["hidden_states"] == ["projected CNN features", "layer 1", "layer 2",
                                        "prediction of teacher layer 4", "prediction of teacher layer 8",
                                        "prediction of teacher layer 12"]
    assert export_s3prl_cli.main([str(tmp_path / "student"), str(without), "--no-heads"]) == 0
    capsys.readouterr()

    audio = utterances([0.45, 0.83])
    got = s3prl_hidden_states(tmp_path, audio, [with_heads, without])
    layers = encoder.config.num_layers
    for u, wav in enumerate(audio):
        with torch.no_grad():
            out = encoder.eval()(wav[None])
            predictions = heads.eval().from_hidden_states(out.hidden_states)[0]  # [K, N, D]
        ours = [out.projected_features[0]] + [h[0] for h in out.hidden_states[1:]]
        expected = {0: ours + list(predictions), 1: ours + ours}  # encoder only: s3prl's self-hidden form
        for c, values in expected.items():
            assert len([k for k in got if k.startswith(f"{c}/{u}/")]) == len(values) == 2 * (layers + 1)
            for i, value in enumerate(values):
                np.testing.assert_allclose(got[f"{c}/{u}/{i}"], value.numpy(), atol=1e-4, rtol=0,
                                           err_msg=f"checkpoint {c}, utterance {u}, hidden state {i}")
            assert float(np.abs(got[f"{c}/{u}/1"]).max()) > 0.1  # (values that would show a difference)


@pytest.mark.parametrize("preset,reason", [("armhubert_s", "attention-map reuse"),
                                           ("oskdft_2024", "parallel adapters"),
                                           ("distilalhubert", "a LayerNorm on the CNN features")])
def test_students_s3prl_cannot_express_are_refused_naming_the_other_routes(preset, reason, tmp_path, capsys):
    encoder, heads = small_student(preset, cnn=whole_cnn)
    save_model(encoder, tmp_path / "student", heads=heads)
    assert export_s3prl_cli.main([str(tmp_path / "student"), str(tmp_path / "x.ckpt")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("export_s3prl: error: s3prl's distiller cannot express this model: ")
    assert reason in error and "speechdistill.bin.export_onnx" in error and "speechdistill.bin.export_hf" in error
    assert not (tmp_path / "x.ckpt").exists()


def test_a_cnn_of_another_stride_is_refused(tmp_path, capsys):
    encoder, heads = small_student("distilhubert")  # 3 of the 7 CNN layers: 20 samples per frame
    save_model(encoder, tmp_path / "student", heads=heads)
    assert export_s3prl_cli.main([str(tmp_path / "student"), str(tmp_path / "x.ckpt")]) == 1
    assert "a CNN stride of 20 samples" in capsys.readouterr().err


def test_an_output_it_cannot_write_or_a_checkpoint_file_is_refused_on_one_line(tmp_path, capsys):
    encoder, heads = small_student("distilhubert", cnn=whole_cnn)
    save_model(encoder, tmp_path / "student", heads=heads)
    (tmp_path / "out_dir").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "speechdistill.bin.export_s3prl", str(tmp_path / "student"),
                          str(tmp_path / "out_dir")], capture_output=True, text=True, env=env)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [f"export_s3prl: error: {tmp_path / 'out_dir'} is a directory. Fix: give the "
                                       f"file to write, e.g. {tmp_path / 'out_dir' / 'student.ckpt'}"]
    (tmp_path / "a_file").write_text("")
    assert export_s3prl_cli.main([str(tmp_path / "student"), str(tmp_path / "a_file" / "x.ckpt")]) == 1
    assert capsys.readouterr().err.startswith(f"export_s3prl: error: {tmp_path / 'a_file' / 'x.ckpt'}: "
                                              f"{tmp_path / 'a_file'} is a file, not a directory. Fix:")
    assert export_s3prl_cli.main([str(tmp_path / "a_file"), str(tmp_path / "x.ckpt")]) == 1
    assert capsys.readouterr().err.startswith(f"export_s3prl: error: {tmp_path / 'a_file'}: a checkpoint file, not "
                                              "our model directory (config.yaml + model.safetensors)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "out_dir", "student"]
    assert not list((tmp_path / "out_dir").iterdir())
