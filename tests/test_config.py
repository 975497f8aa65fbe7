import dataclasses

import pytest

from crysbench import config as C
from crysbench.distributed import detect


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    schedule: str = "cosine"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str = "x"
    epochs: int = 3
    targets: tuple[str, ...] = ("a",)
    size: int | None = None
    optim: Optim = Optim()


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 5\noptim:\n  lr: 0.01\n")
    cfg = C.load(Run, f, ["optim.schedule=onecycle", "targets=[a, b]", "size=100"])
    assert cfg == Run(epochs=5, targets=("a", "b"), size=100, optim=Optim(lr=0.01, schedule="onecycle"))
    assert C.from_dict(Run, C.to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], r"optim: unknown key\(s\) \['lrr'\]"),
    (["epochs=three"], "epochs: expected int"),
    (["epochs=true"], "epochs: expected int"),
    (["nonsense"], "must look like key.sub=value"),
])
def test_bad_config_is_an_error(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.load(Run, None, override)


def test_hash_is_stable_and_sensitive():
    assert C.config_hash(Run()) == C.config_hash(Run())
    assert C.config_hash(Run()) != C.config_hash(Run(epochs=4))


@pytest.mark.parametrize("env, want", [
    ({}, (0, 1, "single")),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1234"}, (1, 2, "torchrun")),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "7",
      "SLURM_JOB_NODELIST": "n[03-04]"}, (1, 2, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, (0, 1, "single")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, (0, 1, "single")),  # batch script of sbatch -n 2, no srun
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, (1, 2, "mpi")),
    ({"PMI_RANK": "0", "PMI_SIZE": "2"}, (0, 2, "mpi")),
])
def test_rank_detection(env, want):
    de = detect(env)
    assert (de.rank, de.world_size, de.source) == want
    if de.source == "slurm":
        assert de.master_addr == "n03" and de.master_port == 29507
