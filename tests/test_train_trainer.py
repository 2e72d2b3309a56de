"""The trainer end to end in this process with the toy task: outputs, metrics, validation, non-finite
losses, unreadable audio, signals, precision, and the command-line helper (as a subprocess)."""
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_toy import ToyConfig, ToyTask, make_data_dir  # noqa: E402
from event_files import assert_events_match_metrics  # noqa: E402

from speechdistill.config import ConfigError, load_config  # noqa: E402
from speechdistill.data.dataset import AudioDataset  # noqa: E402
from speechdistill.data.sampler import BucketBatchSampler  # noqa: E402
from speechdistill.train import REQUEUE_EXIT_CODE, Trainer, TrainingError, lr_multiplier  # noqa: E402
from speechdistill.train.checkpoint import CheckpointError  # noqa: E402
from speechdistill.train.cli import build_parser, parse_args  # noqa: E402
from speechdistill.train.precision import (BF16_CPU_FLAGS, BF16_MIN_PROBE_SPEEDUP, autocast,  # noqa: E402
                                           DeviceCapabilities, choose_precision, common_precision,
                                           cpu_bf16_speedup, cpu_flags, fastest_precision, resolve_precision,
                                           tf32_enabled)

TOY = Path(__file__).resolve().parent / "_train_toy.py"
TRAIN_LENGTHS = [800, 1200] + np.random.default_rng(11).integers(2000, 9000, 12).tolist()  # two too short
VALID_LENGTHS = [4000, 6000, 9000]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer-data")
    return make_data_dir(root / "train", TRAIN_LENGTHS, seed=5), make_data_dir(root / "valid", VALID_LENGTHS,
                                                                               seed=6, prefix="val")


def _config(data, **overrides):
    train, valid = data
    values = dict(train_data=str(train), valid_data=str(valid), max_steps=6, batch_seconds=1.0, max_seconds=0.4,
                  min_seconds=0.1, lr=0.01, warmup_steps=2, log_every=2, valid_every=3, checkpoint_every=2,
                  keep_checkpoints=2, num_workers=0, precision="fp32", device="cpu",
                  allow_emulated_precision=True)  # fp16/bf16 trainer logic runs on any CPU here
    values.update(overrides)
    return ToyConfig(**values)


def _train(config, out, resume="auto"):
    return Trainer(config, ToyTask(config), out, resume=resume).run()


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_outputs_metrics_validation_and_a_finished_rerun(data, tmp_path):
    out = tmp_path / "run"
    config = _config(data)
    result = _train(config, out)
    assert (result.status, result.step, result.exit_code) == ("finished", 6, 0)

    assert load_config(ToyConfig, out / "config.yaml") == config
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-4.pt", "ckpt-6.pt"]  # last 2 kept
    final = torch.load(out / "checkpoints" / "ckpt-6.pt", weights_only=False)
    exported = torch.load(out / "toy_model.pt", weights_only=False)
    assert all(torch.equal(exported[k], final["model"][k]) for k in exported)
    assert final["optimizer"]["state"][0]["step"].item() == 6 and final["scheduler"]["last_epoch"] == 6
    skipped = (out / "skipped_utts.txt").read_text().splitlines()
    assert [line.split()[:3] for line in skipped] == [["utt0000", "train", "too-short:"],
                                                      ["utt0001", "train", "too-short:"]]
    for name in ("loss", "mse", "l1", "lr", "grad_norm", "valid_seconds"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "train.log").read_text()
    assert "2 train utterance(s) shorter than min_seconds=0.1 are skipped" in log and "audio-s/s" in log

    records = _records(out)
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid/mse" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in valid] == [0, 3, 6]
    for record in train:
        assert record["lr/main"] == pytest.approx(0.01 * lr_multiplier(record["step"] - 1, schedule="linear",
                                                                       warmup_steps=2, max_steps=6))
        assert record["loss"] == pytest.approx(record["mse"] + 0.1 * record["l1"], rel=1e-6)
        assert record["audio_sec_per_sec"] > 0 and record["grad_norm"] > 0
        assert (record["skipped_short"], record["skipped_unreadable"], record["skipped_nonfinite"]) == (2, 0, 0)
    # padding of the first two batches, from the batch lengths: 1 - real / (batch size x longest)
    dataset = AudioDataset(config.train_data, max_seconds=0.4, min_seconds=0.1)
    crops = dataset.cropped_num_samples.tolist()
    first_two = BucketBatchSampler(crops, batch_samples=16000, seed=0).global_batches(0)[:2]
    real = sum(crops[i] for b in first_two for i in b)
    padded = sum(len(b) * max(crops[i] for i in b) for b in first_two)
    assert train[0]["padding_fraction"] == pytest.approx(1 - real / padded)
    # validation averages over every utterance of the valid set (crops are 0.4 s = 6400 samples)
    assert valid[0]["valid/seconds"] == pytest.approx((4000 + 6000 + 6400) / 3 / 16000)
    assert valid[-1]["valid/mse"] < valid[0]["valid/mse"]  # it learns

    again = _train(config, out)  # a rerun of a finished run changes nothing
    assert (again.status, again.step) == ("finished", 6)
    assert _records(out) == records
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-4.pt", "ckpt-6.pt"]
    assert "already reached max_steps=6" in (out / "train.log").read_text()


def test_tensorboard_events_hold_every_logged_scalar_and_a_resume_drops_what_the_stopped_run_logged(data, tmp_path):
    out = tmp_path / "run"
    config = _config(data)
    assert _train(config, out).step == 6
    events = assert_events_match_metrics(out)
    assert {"loss", "mse", "l1", "lr/main", "grad_norm", "audio_sec_per_sec", "padding_fraction", "valid/mse",
            "valid/num_utts"} <= set(events)
    assert [step for step, _ in events["loss"]] == [2, 4, 6] and [step for step, _ in events["valid/mse"]] == [0, 3, 6]
    # the run stopped after logging step 6 but before its checkpoint: the resume at 4 logs 5-6 again, and
    # the readers drop the first 6 as metrics.jsonl does
    (out / "checkpoints" / "ckpt-6.pt").unlink()
    assert _train(config, out).step == 6
    files = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert len(files) == 2 and int(files[0].split(".")[3]) < int(files[1].split(".")[3])  # the readers' order: runs'
    again = assert_events_match_metrics(out)
    assert [step for step, _ in again["loss"]] == [2, 4, 6] and again["loss"][:2] == events["loss"][:2]
    assert [step for step, _ in again["valid/mse"]] == [0, 3, 6]

    quiet = tmp_path / "quiet"
    _train(_config(data, tensorboard=False, max_steps=2, valid_data=None), quiet)
    assert (quiet / "metrics.jsonl").is_file() and not (quiet / "tensorboard").exists()


def test_nonfinite_loss_skips_the_update_and_keeps_the_loss_scale(data, tmp_path):
    out = tmp_path / "nan"
    config = _config(data, precision="fp16", nan_calls=[1, 2], valid_data=None)
    result = _train(config, out)
    assert (result.status, result.step) == ("finished", 6)
    final = torch.load(out / "checkpoints" / "ckpt-6.pt", weights_only=False)
    assert final["optimizer"]["state"][0]["step"].item() == 6  # 8 train steps, 6 updates
    assert final["task"][0]["calls"] == 8
    assert final["scaler"]["scale"] == 2.0 ** 16  # a skipped NaN step did not halve the scale
    assert final["counters"]["skipped_nonfinite"] == 2
    assert all(torch.isfinite(v).all() for v in final["model"].values())
    log = (out / "train.log").read_text()
    assert "update 2 skipped: non-finite mse (1 in a row" in log and "(2 in a row, 2 skipped in total)" in log
    assert _records(out)[-1]["skipped_nonfinite"] == 2


def test_nonfinite_in_a_row_stops_naming_step_term_and_checkpoint(data, tmp_path):
    out = tmp_path / "diverged"
    config = _config(data, nan_from_call=3, max_nonfinite_in_row=3, valid_data=None)
    with pytest.raises(TrainingError) as err:
        _train(config, out)
    message = str(err.value)
    assert "update 4" in message and "term: mse" in message and str(out / "checkpoints" / "ckpt-2.pt") in message


def test_unreadable_audio_is_skipped_listed_and_counted(data, tmp_path):
    root = tmp_path / "broken"
    train = make_data_dir(root / "train", [4000] * 10, seed=8, broken=[3, 7])
    out = tmp_path / "run"
    config = _config(data, train_data=str(train), valid_data=None, max_steps=5, batch_seconds=0.5)
    result = _train(config, out)
    assert result.status == "finished"
    listed = (out / "skipped_utts.txt").read_text().splitlines()  # each listed once, however often met
    assert sorted(line.split()[0] for line in listed) == ["utt0003", "utt0007"]
    assert all(" train unreadable: " in line and "not found" in line for line in listed)
    # 5 batches of 2 make epoch 0, all read; a batch left empty pulls one batch of epoch 1
    seen = _records(out)[-1]["skipped_unreadable"]
    assert 2 <= seen <= 4


def test_too_many_unreadable_in_a_row_stops(data, tmp_path):
    train = make_data_dir(tmp_path / "all-broken", [4000] * 6, broken=list(range(6)))
    config = _config(data, train_data=str(train), valid_data=None, max_load_failures_in_row=5)
    with pytest.raises(TrainingError) as err:
        _train(config, tmp_path / "run")
    assert "5 utterances in a row could not be read" in str(err.value) and "not found" in str(err.value)


def _train_signalled_when_paused(config, out, signum):
    """Train in this process; a watcher sends ``signum`` to it once the task pauses (``pause_at_step``)."""
    marker = out / "paused-rank0"

    def send_when_paused():
        for _ in range(1000):
            if marker.exists():
                os.kill(os.getpid(), signum)
                return
            threading.Event().wait(0.01)

    watcher = threading.Thread(target=send_when_paused)
    watcher.start()
    try:
        return _train(config, out)
    finally:
        watcher.join()


def test_sigusr1_checkpoints_and_returns_the_requeue_code(data, tmp_path):
    out = tmp_path / "usr1"
    config = _config(data, valid_data=None, pause_at_step=2, pause_seconds=1.0, checkpoint_every=100)
    handler_before = signal.getsignal(signal.SIGUSR1)
    result = _train_signalled_when_paused(config, out, signal.SIGUSR1)
    assert (result.status, result.step, result.exit_code) == ("preempted", 3, REQUEUE_EXIT_CODE)
    assert result.checkpoint == out / "checkpoints" / "ckpt-3.pt" and result.checkpoint.is_file()
    assert signal.getsignal(signal.SIGUSR1) is handler_before  # handlers restored


def test_a_signal_between_micro_batches_drops_the_update_and_the_resume_is_bitwise_identical(data, tmp_path):
    """SIGTERM during the first of two micro-batches stops the run before the second (a slow update need not
    finish inside a scheduler's grace period): the update is dropped, the checkpoint is the last complete
    update with the sampler position, random streams and task state from before the dropped one, and the
    resumed run ends bitwise where an uninterrupted one does (dropout, noise, Python and numpy draws)."""
    common = dict(valid_data=None, accum_steps=2, max_steps=5, dropout=0.1, noise_std=0.05, random_gain=True,
                  numpy_jitter=True, checkpoint_every=100, log_every=1)
    plain = Trainer(_config(data, **common), ToyTask(_config(data, **common)), tmp_path / "plain")
    assert plain.run().status == "finished"
    out = tmp_path / "stopped"
    config = _config(data, **common, pause_at_step=2, pause_seconds=1.0)
    result = _train_signalled_when_paused(config, out, signal.SIGTERM)
    assert (result.status, result.step, result.exit_code) == ("preempted", 2, REQUEUE_EXIT_CODE)
    assert "SIGTERM received after 1 of 2 micro-batches of update 3: the update is dropped" in \
        (out / "train.log").read_text()
    assert result.checkpoint == out / "checkpoints" / "ckpt-2.pt"
    resumed = Trainer(_config(data, **common), ToyTask(_config(data, **common)), out)
    assert resumed.run().status == "finished"
    expected, found = plain.module.state_dict(), resumed.module.state_dict()
    assert all(torch.equal(expected[name], found[name]) for name in expected)
    assert [r["step"] for r in _records(out) if "loss" in r] == [1, 2, 3, 4, 5]


def test_resume_flag_needs_a_checkpoint_and_bf16_trains(data, tmp_path):
    config = _config(data, valid_data=None, precision="bf16", max_steps=2)
    with pytest.raises(CheckpointError) as err:
        _train(config, tmp_path / "fresh", resume="latest")
    assert "no checkpoint" in str(err.value)
    result = _train(config, tmp_path / "bf16")
    assert result.status == "finished"
    assert "precision bf16" in (tmp_path / "bf16" / "train.log").read_text()
    assert np.isfinite(_records(tmp_path / "bf16")[-1]["loss"])


def test_auto_precision_trains_in_what_is_fastest_here(data, tmp_path):
    """--precision auto (the default) runs what this machine computes fastest: bf16 only on a CPU
    with bf16 units where the probe finds bf16 products faster (the benchmark checks the choice
    against full teacher forwards: tests/test_benchmark.py)."""
    cpu = torch.device("cpu")
    chosen = fastest_precision(cpu)
    if not cpu_flags() & BF16_CPU_FLAGS:
        assert chosen == "fp32"  # bf16 would be emulated in software, several times slower
    else:
        assert chosen == ("bf16" if cpu_bf16_speedup() >= BF16_MIN_PROBE_SPEEDUP else "fp32")
    result = _train(_config(data, valid_data=None, precision="auto", teacher_precision="auto", max_steps=1),
                    tmp_path / "auto")
    assert result.status == "finished"
    assert f"precision {chosen}, teacher {chosen};" in (tmp_path / "auto" / "train.log").read_text()


def test_precision_resolution_from_device_capabilities():
    """auto: bf16 where the device computes it natively (a CPU's probe can veto it), else fp32; an explicit
    precision the device would emulate is replaced by fp32 with a warning saying why and what it costs,
    unless allow_emulated; TF32 on CUDA devices that have it unless turned off."""
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, flags=frozenset({"avx2", "avx512_bf16"})) == "bf16"
    assert resolve_precision("auto", cpu, flags=frozenset({"amx_bf16"})) == "bf16"
    assert resolve_precision("auto", cpu, flags=frozenset({"avx2", "avx512f"})) == "fp32"
    assert resolve_precision("fp16", cpu, flags=frozenset({"amx_fp16", "amx_bf16"})) == "fp16"
    with pytest.raises(ConfigError, match="'fp8' is not one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", cpu)
    avx2 = DeviceCapabilities("cpu", "an AVX2 CPU")
    avx512_bf16 = DeviceCapabilities("cpu", "an EPYC", frozenset({"bf16"}), bf16_speedup=1.8)
    slow_probe = DeviceCapabilities("cpu", "a loaded EPYC", frozenset({"bf16"}), bf16_speedup=1.05)
    h100 = DeviceCapabilities("cuda", "NVIDIA H100", frozenset({"bf16", "fp16"}), tf32=True)
    v100 = DeviceCapabilities("cuda", "Tesla V100", frozenset({"fp16"}), tf32=False)
    assert [choose_precision("auto", c)[0] for c in (avx2, avx512_bf16, slow_probe, h100, v100)] == \
        ["fp32", "bf16", "fp32", "bf16", "fp32"]
    assert choose_precision("fp16", h100) == ("fp16", None) and choose_precision("fp16", v100) == ("fp16", None)
    assert choose_precision("fp32", avx2) == ("fp32", None) and choose_precision("bf16", avx512_bf16)[0] == "bf16"
    precision, warning = choose_precision("fp16", avx2, key="teacher_precision")
    assert precision == "fp32"
    assert "teacher_precision fp16: an AVX2 CPU has no AVX512-FP16 or AMX-FP16" in warning
    assert "emulated" in warning and "7.3 s in fp32" in warning and "allow_emulated_precision" in warning
    precision, warning = choose_precision("bf16", v100)
    assert precision == "fp32" and "bf16 tensor cores (Ampere or newer)" in warning
    precision, warning = choose_precision("fp16", avx2, allow_emulated=True)
    assert precision == "fp16" and "emulated and slow" in warning
    assert tf32_enabled(h100, True) and not tf32_enabled(h100, False)
    assert not tf32_enabled(v100, True) and not tf32_enabled(avx512_bf16, True)
    # DDP ranks train in one precision: agreement kept, a split (a probe near its threshold, mixed GPUs) -> fp32
    assert common_precision(["bf16"]) == common_precision(["bf16", "bf16"]) == "bf16"
    assert common_precision(["fp16", "fp16"]) == "fp16"
    assert common_precision(["bf16", "fp32"]) == common_precision(["fp32", "bf16", "bf16"]) == "fp32"
    with pytest.raises(ValueError):
        common_precision([])
    x = torch.randn(4, 4)
    with autocast(cpu, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
        with autocast(cpu, "fp32"):  # an fp32 teacher inside a bf16 student region really is fp32
            assert (x @ x).dtype == torch.float32


def test_command_line_overrides_and_errors(data, tmp_path):
    parser = build_parser(ToyConfig, prog="toy")
    yaml_path = tmp_path / "conf.yaml"
    yaml_path.write_text("max_steps: 50\nlr: 0.5\nadam_betas: [0.9, 0.99]\n")
    config, args = parse_args(parser, ToyConfig, [
        "--config", str(yaml_path), "--output-dir", str(tmp_path / "o"), "--train-data", str(data[0]),
        "--max-steps", "7", "--nan-from-call", "-3", "--precision", "bf16", "--resume", "--nan_calls", "[1, 2]"])
    assert (config.max_steps, config.lr, config.precision, config.adam_betas) == (7, 0.5, "bf16", (0.9, 0.99))
    assert config.nan_from_call == -3
    assert config.nan_calls == [1, 2] and args.resume == "latest" and args.output_dir == tmp_path / "o"
    assert parse_args(parser, ToyConfig, ["--output-dir", "o", "--train-data", "d"])[1].resume == "auto"

    helped = parser.format_help()
    assert "--max_steps INT (default 1000): total number of optimizer updates" in helped
    assert "--precision auto|fp32|bf16|fp16 (default 'auto')" in helped and "--noise_std FLOAT (default 0.0)" in helped

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_"))}
    bad = subprocess.run([sys.executable, str(TOY), "--output-dir", str(tmp_path / "x"), "--train-data", str(data[0]),
                          "--max_step", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "command line: unknown option '--max_step'; did you mean '--max_steps'?" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_metrics_of_a_resumed_run_drop_later_and_cut_lines(tmp_path):
    from speechdistill.train.logs import MetricsWriter, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 1.5}\n{"step": 4, "loss": 1.0}\n{"step": 6, "loss": 0.5}\n{"step": 8, "lo')
    writer = MetricsWriter(path)
    writer.truncate_after(4)
    writer.write({"step": 6, "loss": float("nan")})
    assert read_metrics(path) == [{"step": 2, "loss": 1.5}, {"step": 4, "loss": 1.0}, {"step": 6, "loss": None}]
