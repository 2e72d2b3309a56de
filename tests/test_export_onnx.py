"""ONNX export of every student preset and of a teacher, run in onnxruntime against our PyTorch model.

Each preset is built with its structure (attention reuse, layer sharing, adapters, heads, pruning to its
sparsity, pre-/post-LN, norms) at small widths around a small teacher of its family, with at most 3
transformer layers and a 4-layer CNN (the first layer with its GroupNorm, a kernel-1 layer where the preset
has one, and the last two); the graph of a layer is the same at every width and depth, and the full-size
presets are exported and checked by ``bin.profile --table``. An export costs several seconds of one core
whatever the width (torch.export's symbolic shapes), so two worker processes export all models while the
tests check them one after another.
"""
import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from speechdistill.bin import export_onnx as export_onnx_cli
from speechdistill.distill.demo import scaled_student_encoder
from speechdistill.models import (Encoder, build_student, count_parameters, list_presets, load_heads, load_model,
                                  load_preset, save_model)
from speechdistill.models.config import architecture
from speechdistill.models.export_onnx import export_onnx, quantize_int8
from speechdistill.data.collate import pad_waveforms
from speechdistill.models.onnx_runtime import OnnxFrontend, OnnxModel, check_export, compare_outputs, torch_outputs
from speechdistill.models.pruning import prune, set_uniform_sparsity
from _train_toy import make_data_dir
from test_students import randomize_

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]
LAYERS = 3  # attention reuse: plain, reuse, plain; sharing of 2 layers: L0, L1, L0


def short_cnn(conv_layers):
    """The first two layers and the last layer of a CNN."""
    layers = [list(layer) for layer in conv_layers]
    return layers if len(layers) <= 3 else layers[:2] + layers[-1:]


def small_teacher(architecture_name: str, cnn=short_cnn) -> Encoder:
    """The architecture's structure (norms, pre/post-LN, relative bias) at 128 wide, 64 CNN channels."""
    reference = architecture(architecture_name)
    config = reference.replace(conv_layers=cnn([[64, k, s] for _, k, s in reference.conv_layers]),
                               hidden_size=128, num_layers=LAYERS, num_heads=4, ffn_size=256, pos_conv_kernel=16,
                               pos_conv_groups=4, num_buckets=32, max_distance=64)
    torch.manual_seed(1)
    return randomize_(Encoder(config), seed=1).eval()


def small_student(name: str, cnn=short_cnn):
    """(encoder, heads) of preset ``name`` at small widths with at most LAYERS layers (pruned presets pruned);
    ``cnn`` picks the layers of the CNN."""
    preset = load_preset(name)
    teacher = small_teacher(preset.teacher_architecture, cnn)
    overrides = scaled_student_encoder(name, {}, None, teacher.config)
    if "conv_layers" in overrides:
        overrides["conv_layers"] = cnn(overrides["conv_layers"])
    layers = min(LAYERS, int(preset.encoder.get("num_layers", LAYERS)))
    overrides["num_layers"] = layers
    if preset.encoder.get("attention_reuse"):
        overrides["attention_reuse"] = preset.encoder["attention_reuse"][:layers]
    if preset.heads:
        preset.heads = dict(preset.heads, source_layers=[min(int(i), layers) for i in preset.heads["source_layers"]])
    if preset.init_from_teacher.layers:
        preset.init_from_teacher.layers = [i % LAYERS for i in preset.init_from_teacher.layers][:layers]
    torch.manual_seed(0)
    student = build_student(preset, teacher, overrides=overrides)
    encoder = randomize_(student.encoder, seed=2).eval()
    if preset.target_sparsity is not None:
        set_uniform_sparsity(encoder, preset.target_sparsity, count_parameters(teacher))
        encoder = prune(encoder)
    heads = randomize_(student.heads, seed=3).eval() if student.heads is not None else None
    return encoder, heads


def utterances(seconds, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * 16000), generator=generator) for s in seconds]


MODELS = list_presets() + ["teacher:wavlm_base"]


def build_and_export(name: str, directory: str) -> str:
    """Worker job: the small model of ``name`` saved in ``directory``/model and exported to model.onnx."""
    torch.set_num_threads(1)
    if name.startswith("teacher:"):
        encoder, heads = small_teacher(name.split(":")[1]), None
    else:
        encoder, heads = small_student(name)
    save_model(encoder, Path(directory) / "model", heads=heads)
    return str(export_onnx(encoder, Path(directory) / "model.onnx", heads=heads).path)


def start_cli_export(root: Path):
    """The command-line export of a small ARMHuBERT-S (int8, heads, two layers, checked on a data dir),
    started at once in its own process: (process, student dir, data dir, output path)."""
    encoder, heads = small_student("armhubert_s")
    save_model(encoder, root / "student", heads=heads)
    data = make_data_dir(root / "dev", [12800, 17600, 6400], seed=5)  # 0.8, 1.1 and 0.4 s
    out = root / "onnx" / "armhubert_s.int8.onnx"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "speechdistill.bin.export_onnx", str(root / "student"), str(out),
                                "--int8", "--heads", "--layers", "3", "0", "--check-data", str(data), "--threads", "1",
                                "--log", str(root / "export.log")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return process, root / "student", data, out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (future of its export, its directory), and "cli" -> start_cli_export(...): all exports start
    at once (the command line's in its own process, the models two at a time in worker processes)."""
    root = tmp_path_factory.mktemp("onnx_exports")
    cli = start_cli_export(root / "cli")
    try:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = {name: (pool.submit(build_and_export, name, str(root / name.replace(":", "_"))),
                           root / name.replace(":", "_")) for name in MODELS}
            yield dict(jobs, cli=cli)
    finally:
        if cli[0].returncode is None:  # (the test did not wait for it)
            cli[0].kill()
            cli[0].communicate()


@pytest.mark.parametrize("name", MODELS)
def test_export_matches_pytorch_alone_and_in_padded_batches_fp32_and_int8(name, exported, tmp_path):
    future, directory = exported[name]
    path = Path(future.result())
    encoder = load_model(directory / "model")
    heads = load_heads(directory / "model")
    model = OnnxModel(path, threads=2)
    expected = [f"hidden_{i}" for i in range(encoder.config.num_layers + 1)] + ["frame_lengths"]
    if heads is not None:
        expected += [f"head_{t}" for t in heads.config.target_layers]
    assert model.outputs == expected

    # each utterance alone (the shortest input with one frame too), then a padded batch of different lengths
    audio = utterances([0.45, 0.2, 0.7]) + utterances([encoder.config.receptive_field / 16000], seed=1)
    for group in ([audio[0]], [audio[3]], audio):
        wavs, lengths = pad_waveforms(group)
        reference = torch_outputs(encoder, wavs, lengths, model.outputs, heads)
        got = model(wavs, lengths)
        assert got["frame_lengths"].tolist() == reference["frame_lengths"].tolist()
        result = compare_outputs([(reference, got)])
        assert result.worst_abs() <= 1e-4, result.max_abs
        assert min(result.reference_max.values()) > 0.05  # (values that would show a difference)
    # hidden_<i> is the encoder's own hidden_states[i] (its forward as users call it, this machine's kernels)
    with torch.no_grad():
        direct = encoder(wavs, lengths).hidden_states
    for b, n in enumerate(got["frame_lengths"].tolist()):
        for i, state in enumerate(direct):
            np.testing.assert_allclose(got[f"hidden_{i}"][b, :n], state[b, :n].numpy(), atol=1e-4, err_msg=f"hidden_{i}")
    # the padded batch gives each utterance what it gives alone
    alone = model(*pad_waveforms([audio[2]]))
    batched = model(*pad_waveforms(audio))
    n = int(alone["frame_lengths"][0])
    assert batched["hidden_0"].shape[1] == n and int(batched["frame_lengths"][3]) == 1
    for output in (o for o in expected if o != "frame_lengths"):
        np.testing.assert_allclose(batched[output][2, :n], alone[output][0, :n], atol=1e-4)

    int8 = quantize_int8(path, tmp_path / "model.int8.onnx")
    nodes = onnx.load(str(int8)).graph.node
    assert sum(node.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for node in nodes) >= 2 * LAYERS
    result = check_export(encoder, OnnxModel(int8, threads=2), audio[:3], heads=heads)
    assert result.lengths_equal
    assert min(result.mean_cosine.values()) >= 0.99, result.mean_cosine
    assert result.worst_abs() > 1e-4  # (it is quantized: not the float32 graph again)


def test_cli_exports_int8_checks_on_held_out_audio_and_names_the_dynamic_axes(exported):
    process, student, data, out = exported["cli"]
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr
    encoder = load_model(student)
    summary = json.loads(stdout)
    outputs = ["hidden_3", "hidden_0", "frame_lengths"] + [f"head_{t}" for t in range(1, 13)]
    assert summary["outputs"] == outputs and summary["layers"] == [3, 0]
    check = summary["check"]
    assert check["audio"] == str(data) and check["utterances"] == 3 and check["frame_lengths_equal"]
    assert set(check["cosine_mean"]) == set(outputs) - {"frame_lengths"}
    assert 0.99 <= min(check["cosine_mean"].values()) < 1.0
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # nothing staged is left
    assert f"wrote {out}" in (student.parent / "export.log").read_text()

    graph = onnx.load(str(out)).graph

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert {v.name: shape(v) for v in graph.input} == {"wavs": ["batch", "samples"], "lengths": ["batch"]}
    shapes = {v.name: shape(v) for v in graph.output}
    assert list(shapes) == outputs
    assert shapes["hidden_3"] == ["batch", "frames", 72] and shapes["frame_lengths"] == ["batch"]
    assert shapes["head_8"] == ["batch", "frames", 128]
    wavs, lengths = pad_waveforms(utterances([0.5, 0.9]))
    values = OnnxModel(out)(wavs, lengths)
    assert values["hidden_3"].shape == (2, int(encoder.frame_lengths(wavs.shape[1])), 72)
    # as a frozen front-end module: SpeechBrain's relative lengths, ESPnet's (features, frame lengths)
    frontend = OnnxFrontend(out)
    stacked = frontend(wavs, lengths / wavs.shape[1])
    assert stacked.shape == (2,) + values["hidden_3"].shape and not list(frontend.parameters())
    np.testing.assert_array_equal(stacked[0].numpy(), values["hidden_3"])
    np.testing.assert_array_equal(stacked[1].numpy(), values["hidden_0"])
    last, frames = OnnxFrontend(out, all_hidden_states=False).encode(wavs, lengths)
    np.testing.assert_array_equal(last.numpy(), values["hidden_0"])
    assert frames.tolist() == values["frame_lengths"].tolist() == encoder.frame_lengths(lengths).tolist()


def test_cli_refuses_layers_the_model_lacks_and_heads_it_has_not(tmp_path, capsys):
    encoder, _ = small_student("distilhubert")
    save_model(encoder, tmp_path / "bare")
    assert export_onnx_cli.main([str(tmp_path / "bare"), str(tmp_path / "x.onnx"), "--layers", "3"]) == 1
    assert "export_onnx: error: --layers [3]: this model has hidden states 0..2" in capsys.readouterr().err
    assert export_onnx_cli.main([str(tmp_path / "bare"), str(tmp_path / "x.onnx"), "--heads"]) == 1
    assert "--heads given but no heads are saved with this model" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def without_package(root: Path, name: str) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import name`` fail as it does where the package is not
    installed."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')\n")
    return root


def test_cli_stops_on_what_needs_no_model_before_the_export_on_one_line(tmp_path, capsys):
    """onnxruntime missing, check data that is not there, an output it cannot write: said at once (not after
    the minutes torch.export takes for a teacher), on one line, exit 1; a log goes into a folder still to be
    made."""
    encoder, _ = small_student("distilhubert")
    save_model(encoder, tmp_path / "student")
    no_onnxruntime = without_package(tmp_path / "site", "onnxruntime")
    student, out = str(tmp_path / "student"), tmp_path / "x.onnx"
    missing = "the Python package 'onnxruntime' is missing; install the ONNX extra"
    cases = {  # name: (arguments, folder first on PYTHONPATH, the error's start)
        "check without onnxruntime": ([student, str(out)], no_onnxruntime, missing),
        "int8 without onnxruntime": ([student, str(out), "--int8", "--no-check"], no_onnxruntime, missing),
        "no check data": ([student, str(out), "--check-data", str(tmp_path / "dev"), "--log",
                           str(tmp_path / "log" / "export.log")], None, f"{tmp_path / 'dev'}: data directory not found"),
    }
    processes = {}
    for name, (arguments, first, _) in cases.items():
        path = [str(first)] if first is not None else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + [str(REPO / "src")]), OMP_NUM_THREADS="1")
        processes[name] = subprocess.Popen([sys.executable, "-m", "speechdistill.bin.export_onnx", *arguments],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    (tmp_path / "a_file").write_text("")
    (tmp_path / "out_dir").mkdir()
    unwritable = {"output is a directory": (tmp_path / "out_dir", f"{tmp_path / 'out_dir'} is a directory. Fix: give "
                                            f"the file to write, e.g. {tmp_path / 'out_dir' / 'model.onnx'}"),
                  "output under a file": (tmp_path / "a_file" / "x.onnx", f"{tmp_path / 'a_file' / 'x.onnx'}: "
                                          f"{tmp_path / 'a_file'} is a file, not a directory. Fix:")}
    for name, (path, message) in unwritable.items():
        assert export_onnx_cli.main([student, str(path)]) == 1, name
        assert capsys.readouterr().err.startswith(f"export_onnx: error: {message}"), name
    assert export_onnx_cli.main([student, str(out), "--check-utts", "0"]) == 1
    assert capsys.readouterr().err.startswith("export_onnx: error: --check-utts 0 --check-seconds 10: the check needs")
    for name, (_, _, message) in cases.items():
        stdout, stderr = processes[name].communicate(timeout=300)
        assert processes[name].returncode == 1, (name, stderr)
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"export_onnx: error: {message}"), (name, stderr)
        assert stdout == ""
    assert (tmp_path / "log" / "export.log").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "log", "out_dir", "site", "student"]
    assert not list((tmp_path / "out_dir").iterdir())
