"""The path a GPU runs, checked on this CPU: host-device synchronisations of a full distillation update
under the reference kernels, the presets' precisions on several devices, and the GPU check itself at toy
sizes (``python -m speechdistill.bin.gpu_check --device cpu --quick``)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, single_process_env
from host_reads import HostReads
from speechdistill.benchmark.gpu_check import QUICK, synthesize_flac_dir, teacher_config, write_run_config
from speechdistill.config import load_config, load_yaml
from speechdistill.distill import DistillConfig, DistillTask
from speechdistill.models.checkpoints import save_model
from speechdistill.models.encoder import Encoder
from speechdistill.train.precision import DeviceCapabilities, choose_precision
from speechdistill.train.trainer import Trainer

CAPABILITIES = [DeviceCapabilities("cpu", "an AVX2 CPU"),
                DeviceCapabilities("cpu", "an AVX512-BF16 CPU", frozenset({"bf16"}), bf16_speedup=1.9),
                DeviceCapabilities("cpu", "a Sapphire Rapids CPU", frozenset({"bf16", "fp16"}), bf16_speedup=5.0),
                DeviceCapabilities("cuda", "Tesla V100", frozenset({"fp16"})),
                DeviceCapabilities("cuda", "NVIDIA H100", frozenset({"bf16", "fp16"}), tf32=True)]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """Synthesized FLAC data and a random tiny 12-layer HuBERT teacher (the GPU check's quick sizes)."""
    root = tmp_path_factory.mktemp("gpu_path")
    data = synthesize_flac_dir(root / "data", QUICK)
    torch.manual_seed(0)
    save_model(Encoder(teacher_config(QUICK)), root / "teacher")
    return root, data, root / "teacher"


def test_one_distillation_update_reads_the_device_at_most_twice(tiny_setup, tmp_path, monkeypatch):
    """A DistilHuBERT update under the reference kernels (the code a GPU runs), in fp32 with a loss log:
    everything that would make the host wait for a GPU (a value read into Python, a tensor made from Python
    data) is counted between the end of one update and the end of the next. The budget is two: the
    update's decision (non-finite? stop? gradient norm) and the loss log."""
    monkeypatch.setenv("SPEECHDISTILL_KERNELS", "reference")
    root, data, teacher = tiny_setup
    path = write_run_config(tmp_path / "run", QUICK, teacher, data, torch.device("cpu"),
                            {"precision": "fp32", "teacher_precision": "fp32", "max_steps": 3, "log_every": 1,
                             "num_workers": 1})
    config = load_config(DistillConfig, path)
    counter = HostReads()
    windows = {}

    def on_update(step):
        if step == 1:
            counter.__enter__()
        elif step == 2:
            counter.__exit__(None, None, None)
            windows["events"] = list(counter.events)

    result = Trainer(config, DistillTask(config), tmp_path / "run" / "out", on_update=on_update).run()
    assert result.status == "finished" and result.step == 3
    events = windows["events"]
    assert len(events) <= 2, events
    assert [kind for kind, _ in events] == ["tolist", "tolist"], events  # the log, then the update's decision


def test_every_preset_trains_in_a_precision_its_device_computes_natively():
    """With default settings no method preset autocasts to a dtype a device would emulate (CPUs without bf16
    units, GPUs without bf16), and each resolves to bf16 on a GPU with bf16 tensor cores."""
    presets = sorted(p for recipe in ("librispeech/distill", "voxceleb/oskdft")
                     for p in (REPO / "egs" / recipe / "conf").glob("*.yaml"))
    checked = 0
    for path in presets:
        data = load_yaml(path)
        for key in ("precision", "teacher_precision"):
            if key not in data:
                continue
            checked += 1
            for capabilities in CAPABILITIES:
                precision, warning = choose_precision(data[key], capabilities, key=key)
                assert warning is None, (path.name, key, warning)
                assert precision == "fp32" or precision in capabilities.native, (path.name, key, capabilities)
            if path.name.startswith(("distilhubert", "armhubert", "dphubert", "starhubert")):
                assert data[key] == "auto", (path.name, key)
                assert choose_precision(data[key], CAPABILITIES[-1])[0] == "bf16"
    assert checked >= 30


def test_the_distilhubert_preset_on_this_cpu_resolves_to_what_it_computes_fast(tiny_setup, tmp_path):
    """The DistilHuBERT preset (paper: fp16) run on this CPU trains in bf16 only where the CPU computes it
    natively (and the probe finds it faster), else fp32 -- never emulated fp16; its explicit fp16 is replaced
    by fp32 with a warning that says why."""
    from speechdistill.train.precision import device_capabilities
    root, data, teacher = tiny_setup
    expected = choose_precision("auto", device_capabilities(torch.device("cpu")))[0]
    for extra, student in (({}, expected), ({"precision": "fp16"}, "fp32" if "fp16" not in
                                            device_capabilities(torch.device("cpu"), measure=False).native else "fp16")):
        out = tmp_path / f"run{len(extra)}"
        path = write_run_config(out, QUICK, teacher, data, torch.device("cpu"), dict(extra, max_steps=1))
        config = load_config(DistillConfig, path)
        assert Trainer(config, DistillTask(config), out / "out").run().status == "finished"
        log = (out / "out" / "train.log").read_text()
        assert f"; precision {student}, teacher " in log
        if extra and student == "fp32":
            assert "precision fp16:" in log and "would be emulated" in log


def test_gpu_check_runs_at_toy_sizes_on_the_cpu(tmp_path):
    """``gpu_check --device cpu --quick``: every part runs and the report holds what the README quotes."""
    result = subprocess.run([sys.executable, "-m", "speechdistill.bin.gpu_check", "--device", "cpu", "--quick",
                             "--out", str(tmp_path / "check")], capture_output=True, text=True, timeout=900,
                            env=single_process_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    runs = {row["run"]: row for row in report["distillation"]}
    assert set(runs) == {"paper", "auto"}
    for row in runs.values():
        assert row["exit_code"] == 0 and row["updates"] == QUICK.updates
        assert row["audio_seconds_per_second"] > 0 and row["teacher_audio_seconds_per_second"] > 0
        assert row["peak_memory_mib"] > 50 and 0 < row["fraction_of_peak"] < 1
    assert runs["paper"]["resolved"]["student"] in ("fp32", "fp16")
    profile = report["profile"]
    assert profile["updates"] == QUICK.profile_updates and profile["top"]
    assert [row["workers"] for row in report["loader"]] == list(QUICK.workers)
    assert all(row["audio_seconds_per_second"] > 0 for row in report["loader"])
    resume = report["resume"]
    assert resume["first_exit_code"] == 99 and resume["resume_exit_code"] == 0
    assert resume["stopped_at_update"] < QUICK.updates and resume["bitwise_equal"] is True and resume["passed"]
    table = (tmp_path / "check" / "gpu_check.md").read_text()
    assert "| paper |" in table and "| auto |" in table and "bitwise equal to an uninterrupted run: True" in table
    assert table in result.stdout
