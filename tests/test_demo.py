"""End to end: the demo (``make demo`` = ``run.sh --demo true``) shortened to seconds, every stage.

A copy of egs/librispeech/distill runs stages 0-6 with ``--demo true`` on the tiny mini corpora
(synthesized once per session by conftest.py's stage 0-1 run; stages 0-1 here prepare the data dirs):
the teacher is trained from scratch by pretrain_hubert (stage 2 without --teacher) and imported,
the DistilHuBERT preset is scaled to it (conf/demo), three ASR probes are trained and decoded
(student, teacher, random student), and stage 6 writes RESULTS.md and the PNGs. Every training
runs a handful of updates; the assertions are about what the stages produce and how they fit
together, not about quality (the README's demo numbers come from the full-size run).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import copy_librispeech_recipe, run_recipe  # noqa: E402

from speechdistill import load_model  # noqa: E402
from speechdistill.models.checkpoints import load_heads  # noqa: E402

PRETRAIN_ARGS = ("--max_steps 3 --labels.num_clusters 8 --labels.kmeans_iterations 5 --labels.kmeans_init_sample 2000 "
                 "--batch_seconds 3 --max_seconds 1.5 --min_seconds 0.2 --num_workers 0 --valid_every 0 "
                 "--log_every 1 --checkpoint_every 100")
DISTILL_ARGS = ("--max_steps 4 --batch_seconds 2 --max_seconds 1 --min_seconds 0.2 --num_workers 0 --valid_every 0 "
                "--log_every 1 --checkpoint_every 100")
ASR_ARGS = "--max_steps 2 --valid_every 0 --batch_seconds 10 --num_workers 0 --log_every 1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return run_recipe(recipe, *args, timeout=600)


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-6000:] + result.stderr[-3000:]


# The probes train on the upstream directly (no feature dumps: two processes less per probe; the dump
# path is tested by test_asr_train.py and test_asr_task.py).
DEMO_ARGS = ["--demo", "true", "--mini_size", "tiny", "--ngpu", "0", "--threads", "1", "--asr_dump_features", "false",
             "--pretrain_args", PRETRAIN_ARGS, "--distill_args", DISTILL_ARGS, "--asr_args", ASR_ARGS]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, librispeech_tiny_stages_0_1):
    """A recipe copy (outside the working tree) after one shortened demo run; returns (recipe, result).

    The copy starts without data/ and exp/; only downloads/mini, the tiny mini corpora synthesized
    by the session's stage 0-1 run (conftest.py, the same size and seed), is copied in, so that
    stages 0-1 find them built and prepare the data dirs from them."""
    recipe = copy_librispeech_recipe(tmp_path_factory.mktemp("demo"))
    shutil.copytree(librispeech_tiny_stages_0_1 / "downloads" / "mini", recipe / "downloads" / "mini", symlinks=True)
    result = _run(recipe, *DEMO_ARGS)  # no --stage/--stop_stage: the defaults are 0 and the last stage
    return recipe, result


def test_the_demo_runs_every_stage_and_prints_the_table(demo):
    recipe, result = demo
    assert result.returncode == 0, _output(result)
    for stage in range(7):
        assert f"stage {stage}:" in result.stdout, f"stage {stage} did not run\n{_output(result)}"
    assert "no --teacher given: pretraining a HuBERT teacher from scratch" in result.stdout
    assert "mini librispeech: already built, kept" in result.stdout  # the session's synthesis (fixture)
    for name in ("train", "dev", "test", "musan_noise", "rirs"):
        assert (recipe / "data" / name / ".prep_done").is_file(), name  # prepared by this run's stages 0-1
    assert "ngpu 0" in result.stdout and "done (stages 0-6)" in result.stdout
    results = (recipe / "exp/demo/RESULTS.md").read_text()
    assert results in result.stdout  # printed as written
    table = [line for line in results.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table] == ["upstream", "teacher", "student", "random student"]
    header = [cell.strip() for cell in table[0].split("|")[1:-1]]
    assert header[-2:] == ["WER %", "CER %"] and [h for h in header if h.startswith("cos L")] == \
        ["cos L4", "cos L8", "cos L12"]
    for png in ("distill_loss.png", "distill_cosine.png", "asr_layer_weights.png"):
        data = (recipe / "exp/demo" / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png
        assert f"]({png})" in results


def test_the_teacher_is_trained_here_and_imported_like_a_real_one(demo):
    recipe, _ = demo
    pretrain = recipe / "exp/demo/teacher_pretrain"
    assert (pretrain / "hf/config.json").is_file()
    marker = (recipe / "exp/demo/teacher/.stage2.done").read_text().splitlines()
    assert marker[0] == f"teacher={(pretrain / 'hf').resolve()}" and marker[1].startswith("teacher_md5=")
    assert marker[2].startswith("pretrained=conf/demo/pretrain_hubert.yaml ") and marker[2].endswith("data=data/train,data/dev")
    assert (pretrain / ".settings").read_text() == marker[2] + "\n"  # what the checkpoints in there were trained with
    teacher = load_model(recipe / "exp/demo/teacher")
    conf = yaml.safe_load((recipe / "conf/demo/pretrain_hubert.yaml").read_text())["encoder"]
    assert (teacher.config.num_layers, teacher.config.hidden_size) == (conf["num_layers"], conf["hidden_size"])
    # the imported weights are the pretrained ones (HF export -> import round trip)
    hf_weights = (pretrain / "hf/model.safetensors").read_bytes()
    assert len(hf_weights) > 0
    ours = load_model(pretrain / "model")
    wavs = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = teacher(wavs).hidden_states[-1]
        b = ours(wavs).hidden_states[-1]
    assert torch.allclose(a, b, atol=1e-4)


def test_results_json_has_the_measurements(demo):
    recipe, _ = demo
    rows = {r["name"]: r for r in json.loads((recipe / "exp/demo/results.json").read_text())}
    teacher, student, random = rows["teacher"], rows["student"], rows["random student"]
    student_model = load_model(recipe / "exp/demo/distill_distilhubert/student")
    assert student["params"] == sum(p.numel() for p in student_model.parameters())
    assert random["params"] == student["params"] < teacher["params"]
    assert random["macs_per_second"] == student["macs_per_second"] < teacher["macs_per_second"]
    import jiwer
    references = dict(line.split(" ", 1) for line in (recipe / "data/test/text").read_text().splitlines())
    for row in rows.values():
        assert row["audio_sec_per_sec"] > 0
        assert row["layer_weights"] and abs(sum(row["layer_weights"]) - 1) < 1e-5
        # WER/CER recomputed with jiwer from the decoded text and the references
        decoded = recipe / row["asr_exp"] / "decode_greedy/test/clean/text"
        hypotheses = dict((line.split(" ", 1) + [""])[:2] for line in decoded.read_text().splitlines())
        keys = sorted(references)
        assert sorted(hypotheses) == keys
        refs, hyps = [references[k] for k in keys], [hypotheses[k] for k in keys]
        assert row["wer"] == pytest.approx(100 * jiwer.wer(refs, hyps), abs=1e-6)
        assert row["cer"] == pytest.approx(100 * jiwer.cer(refs, hyps), abs=1e-6)
    assert len(teacher["layer_weights"]) == 13 and len(student["layer_weights"]) == 3
    for row in (student, random):
        assert sorted(row["cosine"], key=int) == ["4", "8", "12"]
        assert all(-1 <= c <= 1 for c in row["cosine"].values())
    assert teacher["cosine"] == {}
    # the random student is the student's architecture, heads included, with other weights
    random_dir = recipe / "exp/demo/distill_distilhubert/random_student"
    assert load_model(random_dir).config == student_model.config
    heads, random_heads = (load_heads(recipe / "exp/demo/distill_distilhubert/student"), load_heads(random_dir))
    assert heads.config == random_heads.config
    assert not torch.equal(next(heads.parameters()), next(random_heads.parameters()))


def test_the_reported_held_out_cosine_is_recomputed_from_the_saved_models(demo):
    """results.json's cosine, recomputed here without the distillation task: each held-out (data/dev)
    utterance alone through the teacher and through each student with its saved prediction heads,
    the cosine of every frame of head k against teacher layer k, averaged over the utterance, then
    over the utterances. The report batches the utterances with padding: agreement to 1e-5."""
    recipe, _ = demo
    rows = {r["name"]: r for r in json.loads((recipe / "exp/demo/results.json").read_text())}
    teacher = load_model(recipe / "exp/demo/teacher").eval()
    paths = [line.split(maxsplit=1)[1] for line in (recipe / "data/dev/wav.scp").read_text().splitlines()]
    utterances = []
    for path in paths:
        audio, rate = soundfile.read(path, dtype="float32")
        assert rate == 16000 and len(audio) < 20 * rate  # whole utterances: the report's 20 s cut does not apply
        utterances.append(torch.from_numpy(audio)[None])  # [1, T]
    assert len(utterances) >= 2
    for name, subdir in (("student", "student"), ("random student", "random_student")):
        student_dir = recipe / "exp/demo/distill_distilhubert" / subdir
        student, heads = load_model(student_dir).eval(), load_heads(student_dir).eval()
        # DistilHuBERT: three heads on the student's last layer predict teacher layers 4, 8 and 12
        assert list(heads.config.source_layers) == [student.config.num_layers]
        assert list(heads.config.target_layers) == [4, 8, 12]
        per_layer = {layer: [] for layer in heads.config.target_layers}
        with torch.no_grad():
            for wavs in utterances:
                target = teacher(wavs).hidden_states
                predictions = heads(student(wavs).hidden_states[-1])  # [1, 3, N, D]
                for k, layer in enumerate(heads.config.target_layers):
                    assert predictions[0, k].shape == target[layer][0].shape
                    frames = F.cosine_similarity(predictions[0, k], target[layer][0], dim=-1)  # [N]
                    per_layer[layer].append(float(frames.mean()))
        expected = {str(layer): sum(values) / len(values) for layer, values in per_layer.items()}
        assert rows[name]["cosine_kind"] == "cos"  # DistilHuBERT predicts hidden states
        reported = rows[name]["cosine"]
        assert sorted(reported) == sorted(expected)
        for layer, value in expected.items():
            assert abs(reported[layer] - value) < 1e-5, (name, layer, reported[layer], value)


def test_the_demo_config_is_the_preset_scaled_to_the_teacher(demo):
    recipe, _ = demo
    derived = yaml.safe_load((recipe / "exp/demo/conf/distilhubert.yaml").read_text())
    preset = yaml.safe_load((recipe / "conf/distilhubert.yaml").read_text())
    overlay = yaml.safe_load((recipe / "conf/demo/distill.yaml").read_text())
    assert derived["loss_terms"] == preset["loss_terms"] and derived["student"] == preset["student"]
    assert all(derived[key] == value for key, value in overlay.items())
    assert derived["student_encoder"]["hidden_size"] == load_model(recipe / "exp/demo/teacher").config.hidden_size
    metrics = [json.loads(line) for line in (recipe / "exp/demo/distill_distilhubert/metrics.jsonl").open()]
    assert max(r["step"] for r in metrics) == 4  # the --distill_args of the command line win over the demo's


def test_a_rerun_keeps_every_product(demo):
    recipe, first = demo
    assert first.returncode == 0, _output(first)
    products = [recipe / "exp/demo/teacher_pretrain/hf/model.safetensors", recipe / "exp/demo/teacher/model.safetensors",
                recipe / "exp/demo/distill_distilhubert/student/model.safetensors"]
    products += sorted((recipe / "exp/demo").glob("asr_*/asr_model/model.safetensors"))
    assert len(products) == 6
    before = {p: p.stat().st_mtime_ns for p in products}
    again = _run(recipe, *DEMO_ARGS, "--stage", "2", "--stop_stage", "4")
    assert again.returncode == 0, _output(again)
    assert "keeping the teacher pretrained earlier" in again.stdout
    assert "already distilled with these settings; kept" in again.stdout
    assert again.stdout.count("already trained with these settings; kept") == 3
    assert {p: p.stat().st_mtime_ns for p in products} == before


def test_the_table_names_the_similarity_it_reports():
    """Methods that distil Gram matrices (STaRHuBERT) report the Gram-row cosine, labelled as such; the
    others the hidden-state cosine ("cos L<t>"). Rows without a value get '-', the teacher '(target)'."""
    from speechdistill.distill.report import UpstreamRow, results_markdown
    rows = [UpstreamRow("teacher", "t", params=2_000_000, macs_per_second=3e8, audio_sec_per_sec=100.0),
            UpstreamRow("student", "s", params=500_000, macs_per_second=1e8, audio_sec_per_sec=300.0,
                        cosine={1: 0.8694, 12: 0.7275}, wer=99.5, cer=55.3),
            UpstreamRow("random student", "r", params=500_000, macs_per_second=1e8, audio_sec_per_sec=290.0,
                        cosine={1: 0.3254}, wer=100.0, cer=77.3)]
    gram = results_markdown(rows, method="starhubert", data_dir="data/dev", test_name=None, figures=[],
                            cosine_kind="Gram cos")
    assert "| Gram cos L1 | Gram cos L12 | WER % | CER % |" in gram
    assert "cosine similarity of Gram-matrix rows" in gram
    assert "| student | 0.50 M | 0.10 G | 300.0 | 0.869 | 0.728 | 99.5 | 55.3 |" in gram
    assert "| teacher | 2.00 M | 0.30 G | 100.0 | (target) | (target) |" in gram
    plain = results_markdown(rows, method="distilhubert", data_dir="data/dev", test_name=None, figures=[])
    assert "| cos L1 | cos L12 |" in plain and "Gram" not in plain
