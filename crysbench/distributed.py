"""One function decides rank and world size: torchrun, Slurm (srun / sbatch / submitit) or MPI.

Nothing here runs at import; ``init_process_group`` is only called by the trainer.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm", "mpi" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_master_addr(env: dict) -> str:
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    first = nodes.split(",")[0]
    if "[" in first:  # node[01-04] → node01
        prefix, rest = first.split("[", 1)
        first = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return first


def detect(env: dict | None = None) -> DistEnv:
    """Rank/world from the launcher's environment, in order: torchrun, Slurm tasks, MPI, single."""
    env = dict(os.environ if env is None else env)
    port = int(env.get("MASTER_PORT", 0)) or None
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), port or 29500, "torchrun")
    # the tasks of an srun step (submitit launches with srun too); the batch script of an `sbatch -n K`
    # job also sees SLURM_NTASKS=K and SLURM_PROCID=0 but is one process: rank 0 would wait forever
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if "SLURM_PROCID" in env and tasks > 1:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(int(env["SLURM_PROCID"]), tasks, int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or _slurm_master_addr(env),
                       port or 29500 + job % 1000, "slurm")  # per-job port: concurrent jobs don't collide
    for rk, ws, lr in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                       ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID")):
        if rk in env and int(env.get(ws, "1")) > 1:
            return DistEnv(int(env[rk]), int(env[ws]), int(env.get(lr, 0)),
                           env.get("MASTER_ADDR", "127.0.0.1"), port or 29500, "mpi")
    return DistEnv(0, 1, 0, "127.0.0.1", port or 29500, "single")


def init(de: DistEnv, device: torch.device) -> None:
    """Start the process group (gloo on CPU, NCCL on GPU) when there is more than one rank."""
    if de.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{de.master_addr}:{de.master_port}",
                            rank=de.rank, world_size=de.world_size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
