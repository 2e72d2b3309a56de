"""Process-group setup for one process, ``torchrun``, and Slurm's ``srun``.

Three ways to start (detected from the environment, in this order):

* ``torchrun --nproc_per_node N ...`` (one node, or several with ``--nnodes``/``--rdzv_*``): torchrun
  sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; we rendezvous at ``env://``.
  ``python -m speechdistill.bin.torchrun`` takes the same options and also passes SIGTERM/SIGUSR1
  to the ranks and keeps their requeue exit code (:mod:`speechdistill.launch.ranks`).
* ``srun`` with **one task per GPU** (``sbatch --nodes M --ntasks-per-node G --gres gpu:G``, then
  ``srun python -m speechdistill.bin.X ...``): every task is one rank. Rank = SLURM_PROCID,
  world size = SLURM_NTASKS, local rank = SLURM_LOCALID (the GPU it takes), node = SLURM_NODEID;
  the master is the first host of SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST), expanded here
  without ``scontrol``; the port comes from the ``master_port`` option, else $MASTER_PORT, else
  ``20000 + SLURM_JOB_ID % 20000`` (the same on every node, different for concurrent jobs).
  We chose one task per GPU over ESPnet's one task per node that spawns a process per GPU: no
  second launcher inside the job, and every rank is a Slurm task that receives the scheduler's
  signals and returns its own exit code (so the requeue code reaches ``slurm.pl``).
  The Slurm path is taken only inside an ``srun`` step (SLURM_STEP_NUM_TASKS is set) with more
  than one task; a plain ``python`` in a batch script is one process.
* Otherwise: a single process, no process group.

Backend: nccl for CUDA, gloo for CPU.
"""
from __future__ import annotations

import datetime
import itertools
import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

import torch
import torch.distributed as dist

from ..config import ConfigError


class DistributedSetupError(ValueError):
    """The launch environment is inconsistent; the message names the variable and the fix."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``launcher`` is ``single``, ``torchrun`` or ``slurm``."""

    launcher: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    master_addr: Optional[str] = None
    master_port: Optional[int] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_RANGE_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def _expand_brackets(body: str, spec: str) -> List[str]:
    out: List[str] = []
    for item in body.split(","):
        match = _RANGE_ITEM.match(item.strip())
        if not match:
            raise DistributedSetupError(f"host list '{spec}': cannot read range '{item}' (expected N or N-M)")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise DistributedSetupError(f"host list '{spec}': range '{item}' goes backwards")
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(int(first), int(last) + 1))
    return out


def _split_top_level(spec: str) -> List[str]:
    parts, depth, current = [], 0, []
    for char in spec:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise DistributedSetupError(f"host list '{spec}': unbalanced ']'")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise DistributedSetupError(f"host list '{spec}': unbalanced '['")
    parts.append("".join(current))
    return [p for p in parts if p]


def expand_hostlist(spec: str) -> List[str]:
    """Expand a Slurm host list: ``"gpu[01-03,07],login1"`` -> ``gpu01 gpu02 gpu03 gpu07 login1``.

    Zero padding follows the first number of a range; several bracket groups in one name give
    every combination (``rack[1-2]-n[1-2]`` -> ``rack1-n1 rack1-n2 rack2-n1 rack2-n2``).
    """
    hosts: List[str] = []
    for part in _split_top_level(spec.strip()):
        pieces = re.split(r"\[([^\]]*)\]", part)
        choices = [[piece] if i % 2 == 0 else _expand_brackets(piece, spec) for i, piece in enumerate(pieces)]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    if not hosts:
        raise DistributedSetupError(f"host list '{spec}' names no host")
    return hosts


def _int_env(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DistributedSetupError(f"environment variable {name}={value!r} is not an integer; the launcher "
                                    "(torchrun / srun) sets it, do not set it by hand") from None


def detect(environ: Optional[Mapping[str, str]] = None, master_port: Optional[int] = None) -> DistEnv:
    """Read the launch coordinates from ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return DistEnv("torchrun", rank=_int_env(environ, "RANK"), world_size=_int_env(environ, "WORLD_SIZE"),
                       local_rank=_int_env(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0,
                       node_rank=_int_env(environ, "GROUP_RANK") if "GROUP_RANK" in environ else 0,
                       master_addr=environ.get("MASTER_ADDR"),
                       master_port=_int_env(environ, "MASTER_PORT") if "MASTER_PORT" in environ else None)
    if "SLURM_STEP_NUM_TASKS" in environ and _int_env(environ, "SLURM_STEP_NUM_TASKS") > 1:
        world = _int_env(environ, "SLURM_NTASKS")
        rank = _int_env(environ, "SLURM_PROCID")
        if not 0 <= rank < world:
            raise DistributedSetupError(f"SLURM_PROCID={rank} is outside 0..SLURM_NTASKS-1={world - 1}")
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise DistributedSetupError("neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set; run the training "
                                        "command through srun inside an allocation")
        if master_port is None:
            if environ.get("MASTER_PORT"):
                master_port = _int_env(environ, "MASTER_PORT")
            elif environ.get("SLURM_JOB_ID"):
                master_port = 20000 + _int_env(environ, "SLURM_JOB_ID") % 20000
            else:
                raise DistributedSetupError("no rendezvous port: pass --master_port PORT or set MASTER_PORT")
        return DistEnv("slurm", rank=rank, world_size=world, local_rank=_int_env(environ, "SLURM_LOCALID"),
                       node_rank=_int_env(environ, "SLURM_NODEID"), master_addr=expand_hostlist(nodelist)[0],
                       master_port=master_port)
    return DistEnv("single")


def init_process_group(env: DistEnv, device: torch.device, backend: str = "auto", timeout_minutes: float = 30.0
                       ) -> None:
    """Join the process group of ``env`` (nothing to do for one process)."""
    if not env.distributed:
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("config.dist_backend: nccl needs --device cuda; use gloo on CPU")
    if env.launcher == "slurm":
        # env:// reads these; torchrun sets them itself.
        os.environ.update({"MASTER_ADDR": str(env.master_addr), "MASTER_PORT": str(env.master_port),
                           "RANK": str(env.rank), "WORLD_SIZE": str(env.world_size),
                           "LOCAL_RANK": str(env.local_rank)})
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(minutes=timeout_minutes),
                            device_id=device if device.type == "cuda" else None)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op without a process group); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
