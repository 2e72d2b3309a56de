"""Launch detection (torchrun, srun, single), Slurm host lists, and real 2-process DDP runs on gloo.

The DDP runs check the gradient normalisation: batches are seconds budgets, so the two ranks hold
different numbers of frames, and the toy loss is a mean over frames. Two ranks with one micro-batch
each must end where one process accumulating the same two micro-batches ends (the sampler gives
rank r the global batches r, r + 2, ..., which the single process takes in order).
"""
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import single_process_env  # noqa: E402
from _train_toy import make_data_dir  # noqa: E402

from speechdistill.data.dataset import AudioDataset  # noqa: E402
from speechdistill.data.sampler import BucketBatchSampler  # noqa: E402
from speechdistill.train.distributed import DistributedSetupError, detect, expand_hostlist  # noqa: E402

TOY = Path(__file__).resolve().parent / "_train_toy.py"


@pytest.mark.parametrize("spec, hosts", [
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("gpu[8-11],login", ["gpu8", "gpu9", "gpu10", "gpu11", "login"]),
    ("a[1,3-4]b,c007", ["a1b", "a3b", "a4b", "c007"]),
    ("rack[1-2]-n[09-10]", ["rack1-n09", "rack1-n10", "rack2-n09", "rack2-n10"]),
    ("single", ["single"]),
])
def test_expand_hostlist(spec, hosts):
    assert expand_hostlist(spec) == hosts


def test_expand_hostlist_rejects_garbage():
    with pytest.raises(DistributedSetupError):
        expand_hostlist("node[01-")
    with pytest.raises(DistributedSetupError):
        expand_hostlist("node[5-3]")


def test_detect_torchrun_slurm_and_single():
    torchrun = detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234",
                       "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "0"})
    assert (torchrun.launcher, torchrun.rank, torchrun.world_size, torchrun.local_rank) == ("torchrun", 3, 4, 1)
    slurm_env = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
                 "SLURM_NODEID": "2", "SLURM_STEP_NODELIST": "gpu[03-06]", "SLURM_JOB_NODELIST": "gpu[01-09]",
                 "SLURM_JOB_ID": "123456"}
    slurm = detect(slurm_env)
    assert (slurm.launcher, slurm.rank, slurm.world_size, slurm.local_rank, slurm.node_rank) == ("slurm", 5, 8, 1, 2)
    assert slurm.master_addr == "gpu03" and slurm.master_port == 20000 + 123456 % 20000
    assert detect({**slurm_env, "MASTER_PORT": "29999"}).master_port == 29999
    assert detect({**slurm_env, "MASTER_PORT": "29999"}, master_port=31000).master_port == 31000
    # a plain python in a batch script of an allocation with 8 tasks is not an srun step
    batch_script = {k: v for k, v in slurm_env.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert detect(batch_script).launcher == "single"
    assert detect({}).world_size == 1
    with pytest.raises(DistributedSetupError) as err:
        detect({**slurm_env, "SLURM_PROCID": "8"})
    assert "SLURM_PROCID" in str(err.value)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




MAX_STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-data")
    lengths = np.random.default_rng(7).integers(1600, 9600, 22).tolist()
    train = make_data_dir(root / "train", lengths, seed=3)
    valid = make_data_dir(root / "valid", [3000, 5000, 7000, 9000, 4100], seed=4, prefix="val")
    return train, valid


def _args(data, out, *extra):
    train, valid = data
    return ["--output-dir", str(out), "--train-data", str(train), "--valid-data", str(valid),
            "--max_steps", str(MAX_STEPS), "--batch_seconds", "1.0", "--max_seconds", "0.45", "--min_seconds", "0.1",
            "--lr", "0.01", "--warmup_steps", "2", "--grad_clip", "0.5", "--precision", "fp32", "--device", "cpu",
            "--threads", "1", "--num_workers", "0", "--log_every", "1", "--valid_every", "2",
            "--checkpoint_every", "2", *extra]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _valid_records(out):
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "valid/mse" in line]


def test_two_ranks_equal_one_process_with_the_same_global_batch(data, tmp_path):
    # The toy data must give frames of different counts to the two ranks and stay within epoch 0.
    dataset = AudioDataset(data[0], max_seconds=0.45, min_seconds=0.1)
    batches = BucketBatchSampler(dataset.cropped_num_samples.tolist(), batch_samples=16000).global_batches(0)
    assert len(batches) >= 2 * MAX_STEPS
    sizes = [int(sum(dataset.cropped_num_samples[i] // 16 for i in b)) for b in batches[:2 * MAX_STEPS]]
    assert sizes[0::2] != sizes[1::2]

    single, torchrun, slurm = tmp_path / "single", tmp_path / "torchrun", tmp_path / "slurm"
    procs = [subprocess.Popen([sys.executable, str(TOY), *_args(data, single, "--accum_steps", "2")],
                              env=single_process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(TOY),
         *_args(data, torchrun)], env=single_process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    port = _free_port()
    for rank in range(2):  # what srun --ntasks-per-node 2 sets for each task
        env = single_process_env()
        env.update(SLURM_STEP_NUM_TASKS="2", SLURM_NTASKS="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                   SLURM_NODEID="0", SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID="42")
        procs.append(subprocess.Popen([sys.executable, str(TOY), *_args(data, slurm, "--master_port", str(port))],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-4000:]

    reference = _load(single / "params-rank0.pt")
    for out in (torchrun, slurm):
        rank0, rank1 = _load(out / "params-rank0.pt"), _load(out / "params-rank1.pt")
        for name in reference:
            assert torch.equal(rank0[name], rank1[name]), f"{out.name}: ranks differ in {name}"
            torch.testing.assert_close(rank0[name], reference[name], rtol=1e-5, atol=1e-6)
        assert not torch.equal(rank0["proj.weight"], _load(out / "checkpoints" / "ckpt-2.pt")["model"]["proj.weight"])
        # validation is sharded over the ranks and averaged over all utterances
        for mine, theirs in zip(_valid_records(out), _valid_records(single)):
            assert mine["valid/num_utts"] == theirs["valid/num_utts"] == 5
            assert mine["valid/mse"] == pytest.approx(theirs["valid/mse"], rel=1e-5)
            assert mine["valid/seconds"] == pytest.approx(theirs["valid/seconds"], rel=1e-9)
    assert "launcher slurm: rank 0 of 2" in (slurm / "train.log").read_text()
    assert "launcher torchrun: rank 0 of 2" in (torchrun / "train.log").read_text()

    # A checkpoint of 2 ranks resumes in one process (another world size): not exact, but it goes on.
    more = subprocess.run([sys.executable, str(TOY), *_args(data, torchrun, "--max_steps", str(MAX_STEPS + 2))],
                          env=single_process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert more.returncode == 0, more.stderr[-4000:]
    log = (torchrun / "train.log").read_text()
    assert "written by 2 rank(s), this run has 1" in log and f"finished at update {MAX_STEPS + 2}" in log
