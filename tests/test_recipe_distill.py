"""End to end: egs/librispeech/distill stages 2-3 for every method preset, from a clean recipe copy.

Stages 0-1 build the tiny embedded mini corpora once (conftest.py); the teachers are random-weight
models of the real shapes saved in Hugging Face format with transformers (HubertModel Base;
WavLMModel Base(+) for the WavLM presets), imported once each by stage 2. Every preset then runs
stages 2-3 on CPU with ``--distill_args "--max_steps 6 ..."`` (crops of 0.5 s, batches of 1 s, no
accumulation; six updates cross an epoch boundary of the 8 training utterances, with a log record
every 3 updates and a checkpoint at the end) and must leave a student directory that
``speechdistill.load_model`` loads, whose size is the published one where the preset's size is
fixed (pruned students aside). The preset runs are independent single-threaded processes, so they
run two at a time (one per core of the CI machine), the two-step DPHuBERT chains first. Stage 2
without --teacher (a teacher trained here) and reruns that keep every product are covered by
tests/test_demo.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_recipe as _run  # noqa: E402
from event_files import assert_events_match_metrics  # noqa: E402
from test_distill_common import FIRST_STAGE_PRESETS  # noqa: E402

from speechdistill import load_model  # noqa: E402
from speechdistill.models.checkpoints import load_heads  # noqa: E402
from speechdistill.models.students import load_preset  # noqa: E402

WAVLM_PRESETS = {"armwavlm_s", "armwavlm_s_100", "rd_dpwavlm"}
STEPS = 6
TINY_ARGS = (f"--max_steps {STEPS} --batch_seconds 1.0 --max_seconds 0.5 --min_seconds 0.3 --accum_steps 1 "
             "--precision fp32 --teacher_precision fp32 --num_workers 0 --threads 1 --valid_at_start true "
             f"--valid_every 0 --log_every {STEPS // 2} --checkpoint_every {STEPS}")


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-4000:]


@pytest.fixture(scope="session")
def recipe(librispeech_tiny_stages_0_1):
    """A copy of the recipe (outside the working tree) with stages 0-1 done on the tiny mini corpora
    (conftest.py; its data dirs are only read here and by tests/test_demo.py)."""
    return librispeech_tiny_stages_0_1


@pytest.fixture(scope="session")
def hf_teachers(tmp_path_factory):
    """Random-weight HuBERT Base and WavLM Base(+) shaped teachers, saved by transformers."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf-teachers")
    torch.manual_seed(0)
    transformers.HubertModel(transformers.HubertConfig()).save_pretrained(root / "hubert_base")
    transformers.WavLMModel(transformers.WavLMConfig()).save_pretrained(root / "wavlm_base_plus")
    return {"hubert": root / "hubert_base", "wavlm": root / "wavlm_base_plus"}


def _teacher_args(name: str, hf_teachers) -> list:
    kind = "wavlm" if name in WAVLM_PRESETS else "hubert"
    return ["--teacher", str(hf_teachers[kind]), "--teacher_dir", f"exp/teacher_{kind}"]


def _stages_2_3(recipe: Path, name: str, hf_teachers) -> subprocess.CompletedProcess:
    return _run(recipe, "--stage", "2", "--stop_stage", "3", "--ngpu", "0", *_teacher_args(name, hf_teachers),
                "--distill_config", f"conf/{name}.yaml", "--distill_args", TINY_ARGS)


@pytest.fixture(scope="session")
def preset_runs(recipe, hf_teachers):
    """Stages 2-3 of every preset. Stage 2 imports each teacher once first; the stage-3 runs (whose
    stage 2 then finds its marker) go two at a time, longest first."""
    first = ["distilhubert", "armwavlm_s"]  # one preset per teacher: these two runs import them
    rest = sorted(set(FIRST_STAGE_PRESETS) - set(first), key=lambda n: (n not in ("dphubert", "rd_dpwavlm"), n))
    results = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for names in (first, rest):
            results.update(zip(names, pool.map(lambda n: _stages_2_3(recipe, n, hf_teachers), names)))
    return results


@pytest.mark.parametrize("name", FIRST_STAGE_PRESETS)
def test_stages_2_3_produce_a_loadable_student(name, recipe, preset_runs):
    result = preset_runs[name]
    assert result.returncode == 0, _output(result)
    exp = recipe / "exp" / f"distill_{name}"
    assert "student=" in (exp / ".stage3.done").read_text()
    student = load_model(exp / "student")
    wavs = 0.1 * torch.randn(2, 8000)
    hidden = student(wavs, torch.tensor([8000, 6000])).hidden_states
    assert len(hidden) == student.config.num_layers + 1 and all(torch.isfinite(h).all() for h in hidden)

    config = yaml.safe_load((recipe / "conf" / f"{name}.yaml").read_text())
    if config.get("next_stage"):  # DPHuBERT chain: the pruned student was distilled once more
        assert (exp / "step1" / "student" / "model.safetensors").is_file()
        assert "--student_from exp/distill_" in (exp / "log" / "distill_train.log").read_text()
        teacher = load_model(recipe / "exp" / ("teacher_wavlm" if name in WAVLM_PRESETS else "teacher_hubert"))
        assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
        assert not (student.config.prune_ffn or student.config.prune_heads or student.config.prune_conv)
    else:
        preset = load_preset(config["student"])
        heads = load_heads(exp / "student")
        size = sum(p.numel() for p in student.parameters())
        if preset.params_include_heads:
            size += sum(p.numel() for p in heads.parameters())
        assert size == preset.published_params
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [STEPS // 2, STEPS]
    assert trained[-1]["audio_sec_per_sec"] > 0
    summary = json.loads((exp / "distill_summary.json").read_text())
    assert summary["teacher_forward_audio_sec_per_sec"] > 0
    validated = [r for r in records if "valid/num_utts" in r]
    assert any(k.startswith(("valid/cos/layer", "valid/gram_cos/layer")) for k in validated[-1])
    # training changed the student: the held-out scores of the same data before and after differ
    start, end = validated[0], validated[-1]
    assert start["step"] == 0 and end["step"] == STEPS
    scores = [k for k in start if k.startswith("valid/") and k != "valid/num_utts"]
    assert scores and max(abs(end[k] - start[k]) for k in scores) > 1e-4, (start, end)
    events = assert_events_match_metrics(exp)  # TensorBoard: the same scalars, the cosine per layer among them
    assert any(tag.startswith(("valid/cos/layer", "valid/gram_cos/layer")) for tag in events)


def test_stages_2_3_on_the_reference_kernels_the_gpu_path(recipe, hf_teachers, preset_runs, monkeypatch):
    """SPEECHDISTILL_KERNELS=reference (the model's plain PyTorch, what a GPU runs) through the recipe's
    stages 2-3 with the DistilHuBERT preset: it trains, logs its policy, and exports a student whose outputs
    match those of the student trained on this CPU's kernels to training noise."""
    monkeypatch.setenv("SPEECHDISTILL_KERNELS", "reference")
    name = "distilhubert"
    result = _run(recipe, "--stage", "2", "--stop_stage", "3", "--ngpu", "0", *_teacher_args(name, hf_teachers),
                  "--distill_config", f"conf/{name}.yaml", "--distill_exp", "exp/distill_reference",
                  "--distill_args", TINY_ARGS)
    assert result.returncode == 0, _output(result)
    exp = recipe / "exp" / "distill_reference"
    assert "kernels reference;" in (exp / "train.log").read_text()
    trained = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in trained if "loss" in r] == [STEPS // 2, STEPS]
    reference, kernels = load_model(exp / "student"), load_model(recipe / "exp" / f"distill_{name}" / "student")
    wavs = 0.1 * torch.randn(2, 8000)
    with torch.no_grad():
        a = reference(wavs, torch.tensor([8000, 6000])).hidden_states[-1]
        b = kernels(wavs, torch.tensor([8000, 6000])).hidden_states[-1]
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_two_processes_through_torchrun_equal_one_process_accumulating(recipe, hf_teachers, preset_runs):
    """--ngpu 2 on one node starts torchrun; on this CPU machine the two ranks train on gloo. Without dropout
    (crops are drawn from (seed, epoch, utterance) alone) two ranks with one batch each per update must end
    where one process accumulating the same two batches ends: the sampler gives rank r the global batches
    r, r + 2, ..., which the single process takes in order."""
    name = "distilhubert"
    no_dropout = " ".join(f"--student_encoder.{key} 0.0" for key in ("dropout", "attention_dropout",
                                                                      "activation_dropout", "dropout_input"))
    args = TINY_ARGS.replace(f"--max_steps {STEPS}", "--max_steps 2") + f" --device cpu {no_dropout}"
    runs = {}
    for exp, ngpu, accum in (("distill_torchrun", "2", "1"), ("distill_accumulate", "0", "2")):
        result = _run(recipe, "--stage", "2", "--stop_stage", "3", "--ngpu", ngpu, *_teacher_args(name, hf_teachers),
                      "--distill_config", f"conf/{name}.yaml", "--distill_exp", f"exp/{exp}",
                      "--distill_args", args.replace("--accum_steps 1", f"--accum_steps {accum}"))
        assert result.returncode == 0, _output(result)
        runs[exp] = load_model(recipe / "exp" / exp / "student").state_dict()
    assert "launcher torchrun: rank 0 of 2" in (recipe / "exp" / "distill_torchrun" / "train.log").read_text()
    teacher = load_model(recipe / "exp" / "teacher_hubert").state_dict()
    copied = "layers.0.feed_forward.fc1.weight"  # initialised from the teacher's layer 0, then trained
    assert copied in teacher and not torch.equal(runs["distill_torchrun"][copied], teacher[copied])
    for key, value in runs["distill_accumulate"].items():
        torch.testing.assert_close(runs["distill_torchrun"][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("name,kind", [("starhubert", "Gram cos"), ("distilhubert", "cos")])
def test_the_report_measures_the_similarity_the_method_distils(name, kind, recipe, preset_runs):
    """Stage 6's held-out similarity: STaRHuBERT (Gram-matrix targets, no prediction heads) gets the Gram-row
    cosine of the layers its validation reports, DistilHuBERT the hidden-state cosine of its head targets."""
    from speechdistill.distill.report import held_out_similarity
    assert preset_runs[name].returncode == 0, _output(preset_runs[name])
    exp = recipe / "exp" / f"distill_{name}"
    teacher = recipe / "exp" / "teacher_hubert"
    measured_kind, values = held_out_similarity(exp, {"student": exp / "student"}, teacher, recipe / "data" / "dev")
    assert measured_kind == kind
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    prefix = "valid/gram_cos/layer" if kind == "Gram cos" else "valid/cos/layer"
    validated_layers = {int(k[len(prefix):]) for r in records for k in r if k.startswith(prefix)}
    assert set(values["student"]) == validated_layers and validated_layers
    assert all(-1.0 <= v <= 1.0 for v in values["student"].values())
