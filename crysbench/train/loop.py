"""The training loop: set-up, loop, evaluate, checkpoint. Reads no globals and no argv.

``run(cfg)`` trains one model described by a RunConfig into ``<out_dir>/<run_id>/``:
config.yaml, metrics.jsonl (one record per epoch), final.json (test metrics + telemetry), ckpt/.
A finished run (final.json present) is skipped; an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from crysbench import config as C
from crysbench import distributed
from crysbench.train import checkpoint
from crysbench.train.config import RunConfig
from crysbench.train.metrics import masked_loss, regression_metrics
from crysbench.train.nvml import energy_since, gpu_energy_mj
from crysbench.train.schedule import make_scheduler
from crysbench.transfer.strategies import train_mode


def run_id(cfg: RunConfig) -> str:
    return C.config_hash(cfg)


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / run_id(cfg)


def _device(name: str, de: distributed.DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{de.local_rank}" if name == "cuda" else name)


def _autocast(device: torch.device, mode: str):
    if mode == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def build_model(cfg: RunConfig, n_targets: int) -> torch.nn.Module:
    from crysbench import models

    ladder = models.get(cfg.model.name).size_ladder(n_targets=n_targets)
    if cfg.model.size not in ladder:
        raise ValueError(f"model {cfg.model.name!r} has no size {cfg.model.size!r}; ladder: {list(ladder)}")
    return models.build(cfg.model.name, ladder[cfg.model.size])


def _prepare_transfer(model, cfg: RunConfig, n_targets: int, log) -> list:
    """Load pre-trained weights, reshape the head and freeze per the strategy; the trainable params."""
    from crysbench.transfer.strategies import apply_strategy, load_pretrained, replace_head, trainable_parameters

    t = cfg.transfer
    if t.init_from:
        report = load_pretrained(model, checkpoint.load(t.init_from)["model"], skip_head=t.skip_head,
                                 prefix=t.init_prefix)
        log(f"initialised from {t.init_from}: {len(report.loaded)} tensors loaded, {len(report.fresh)} fresh")
    if t.head_extra_layers:
        replace_head(model, n_targets, t.head_extra_layers)
    apply_strategy(model, t.strategy, list(t.layers) or None)
    return trainable_parameters(model)


@torch.no_grad()
def evaluate(model, batches, normalizer, names, device, precision) -> tuple[dict, dict]:
    """Metrics in original units and the raw predictions (ids, y, ŷ) over an iterable of batches."""
    model.eval()
    preds, targets, masks, ids = [], [], [], []
    for batch in batches:
        batch = batch.to(device)
        with _autocast(device, precision):
            out = model(batch)
        preds.append(normalizer.denorm(out.float()).cpu())
        targets.append(batch.targets.cpu().double())
        masks.append(batch.mask.cpu())
        ids.extend(getattr(batch, "ids", None) or [])
    train_mode(model)
    if not preds:
        return {}, {}
    p, t, m = torch.cat(preds), torch.cat(targets), torch.cat(masks)
    return regression_metrics(p, t, m, names), {"ids": ids, "pred": p.tolist(), "target": t.tolist(),
                                                "mask": m.tolist()}


def _flops_per_crystal(model, batch, normalizer, loss_kind) -> float:
    """Training FLOPs (forward + backward) per crystal, counted by torch on one batch."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model)  # a copy: the probe must not move batch-norm statistics or RNG streams
    counter = FlopCounterMode(display=False)
    with torch.random.fork_rng(), counter:
        out = probe(batch)
        masked_loss(out, normalizer.norm(batch.targets), batch.mask, loss_kind).backward()
    return counter.get_total_flops() / max(1, batch.num_crystals)


def load_teacher(folder: str | Path) -> torch.nn.Module:
    """A finished run's model rebuilt from its ``config.yaml`` with the weights of ``ckpt/best.pt``
    (the student's weights when that run was itself distilled)."""
    folder = Path(folder)
    cfg_file, ckpt = folder / "config.yaml", folder / "ckpt" / "best.pt"
    if not cfg_file.exists() or not ckpt.exists():
        raise FileNotFoundError(f"teacher {folder}: needs config.yaml and ckpt/best.pt (a finished run folder)")
    tcfg = C.load(RunConfig, str(cfg_file))
    state = checkpoint.load(ckpt)["model"]
    if any(k.startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    n_targets = 1 if tcfg.train.objective == "ssl" else len(tcfg.data.targets)
    model = build_model(tcfg, n_targets)
    model.load_state_dict(state)
    return model


def _init_normalizer(init_from: str):
    """The target normalizer of the run that wrote checkpoint ``init_from`` (<run>/ckpt/<name>.pt)."""
    from crysbench.train.metrics import Normalizer

    final = Path(init_from).resolve().parent.parent / "final.json"
    if not final.exists():
        raise FileNotFoundError(f"transfer.init_normalizer: {final} missing (the init run is not finished)")
    state = json.loads(final.read_text())["normalizer"]
    return Normalizer(torch.tensor(state["mean"]), torch.tensor(state["std"]))


def run(cfg: RunConfig, resume: bool = True, log=print) -> dict:
    """Train one model; return the final record (also written to final.json)."""
    if cfg.train.objective == "ssl":
        from crysbench.transfer.pretrain import run_ssl

        return run_ssl(cfg, resume=resume, log=log)
    # ---- set-up -----------------------------------------------------------------------------
    timeline = {"process_start": _process_start(), "run_start": time.time()}  # unix s, for overhead studies
    from crysbench.train.data import make_run_data

    de = distributed.detect()
    device = _device(cfg.train.device, de)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = run_dir(cfg)
    if (out / "final.json").exists():
        return json.loads((out / "final.json").read_text())
    distributed.init(de, device)
    energy0 = gpu_energy_mj(device)  # NVML; None on CPU
    if de.is_main:
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(C.dump_yaml(cfg))
    torch.manual_seed(cfg.train.seed)
    data = make_run_data(cfg.data, de, seed=cfg.train.seed)
    normalizer, names = data.normalizer, list(data.target_names)
    if cfg.transfer.init_normalizer:
        if not cfg.transfer.init_from:
            raise ValueError("transfer.init_normalizer needs transfer.init_from")
        normalizer = _init_normalizer(cfg.transfer.init_from)
    model = build_model(cfg, len(names))
    trainable = _prepare_transfer(model, cfg, len(names), log)
    distill = bool(cfg.transfer.teacher)
    if distill:
        from crysbench.transfer.distill import DistillModel

        model = DistillModel(model, load_teacher(cfg.transfer.teacher), lam=cfg.transfer.distill_lambda,
                             kind=cfg.train.loss)
        trainable = model.trainable_parameters()
        log(f"distilling from {cfg.transfer.teacher} (lambda {cfg.transfer.distill_lambda})")
    model = model.to(device)
    core = model
    if de.world_size > 1:
        if device.type == "cuda":  # batch statistics over the global batch (CPU has no SyncBatchNorm)
            core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
        model = torch.nn.parallel.DistributedDataParallel(core)
    opt = torch.optim.AdamW(trainable, lr=cfg.optim.max_lr, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = data.steps_per_epoch
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    sched = make_scheduler(opt, cfg.optim, total_steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.mixed_precision == "fp16" else None
    step, epoch, skip, history = 0, 0, 0, []
    best = {"val_loss": float("inf"), "epoch": -1}
    flops_per_crystal, crystals_seen, atoms_seen, train_time = None, 0, 0, 0.0
    ckpt_path = out / "ckpt" / "last.pt"
    if resume and ckpt_path.exists():
        state = checkpoint.load(ckpt_path)
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        best, history = state["best"], state["history"]
        crystals_seen, atoms_seen, train_time = (state["counters"][k] for k in ("crystals", "atoms", "seconds"))
        log(f"resumed {out.name} at step {step} (epoch {epoch}, batch {skip})")

    def save_ckpt(batch_in_epoch: int, seconds: float) -> None:
        if de.is_main:
            checkpoint.save(ckpt_path, model=core, optimizer=opt, scheduler=sched, scaler=scaler, step=step,
                            epoch=epoch, batch_in_epoch=batch_in_epoch, best=best, history=history,
                            counters={"crystals": crystals_seen, "atoms": atoms_seen,
                                      "seconds": seconds})

    # ---- loop -------------------------------------------------------------------------------
    timeline["train_start"] = time.time()
    stop = step >= total_steps
    while epoch < cfg.train.epochs and not stop:
        train_mode(core)  # frozen blocks stay in eval mode: their batch-norm statistics do not move
        t0, ep_loss, ep_n = time.perf_counter(), 0.0, 0
        for k, batch in enumerate(data.train_batches(epoch)):
            if k < skip:
                continue  # already trained on before the interruption: same order, same seed
            batch = batch.to(device)
            if flops_per_crystal is None:
                flops_per_crystal = _flops_per_crystal(core, batch, normalizer, cfg.train.loss)
            if distill:  # property loss + lambda * embedding distance to the teacher
                with _autocast(device, cfg.train.mixed_precision):
                    loss, _ = model(batch, normalizer.norm(batch.targets).float())
                loss = loss.float()
            else:
                with _autocast(device, cfg.train.mixed_precision):
                    pred = model(batch)
                loss = masked_loss(pred.float(), normalizer.norm(batch.targets).float(), batch.mask,
                                   cfg.train.loss)
            optimizer_step(loss, opt, sched, scaler, trainable, cfg.optim.grad_clip)
            step += 1
            n_graphs = data.global_graphs(batch)
            crystals_seen += n_graphs
            atoms_seen += int(batch.numbers.shape[0]) * de.world_size
            ep_loss, ep_n = ep_loss + loss.item() * batch.num_crystals, ep_n + batch.num_crystals
            over_flops = cfg.train.max_flops and flops_per_crystal * crystals_seen >= cfg.train.max_flops
            if step >= total_steps or over_flops:
                stop = True
                break
            if step % cfg.train.ckpt_every == 0:
                save_ckpt(k + 1, train_time + time.perf_counter() - t0)
        train_time += time.perf_counter() - t0
        ep_loss, ep_n = _global_sum(ep_loss, ep_n, de)
        skip = 0
        epoch += 1
        # ---- evaluate -----------------------------------------------------------------------
        val = {}
        if de.is_main:
            val, _ = evaluate(core, data.val_batches(), normalizer, names, device, cfg.train.mixed_precision)
        val_loss = _mean_norm_mae(val, normalizer, names)
        record = {"epoch": epoch, "step": step, "train_loss": ep_loss / max(ep_n, 1), "val_loss": val_loss,
                  "val": val, "lr": sched.get_last_lr()[0], "crystals_seen": crystals_seen,
                  "epoch_time_s": time.perf_counter() - t0}
        history.append(record)
        if de.is_main:
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch}
                checkpoint.atomic_save({"model": core.state_dict()}, out / "ckpt" / "best.pt")
            _write_jsonl(out / "metrics.jsonl", history)
            log(f"[{out.name}] epoch {epoch} step {step} train {record['train_loss']:.4f} val {val_loss:.4f}")
        patience = cfg.train.early_stop_patience
        if patience and epoch - best["epoch"] >= patience:
            stop = True
        stop = _agree(stop, de)
        save_ckpt(0, train_time)

    # ---- final evaluation on the best checkpoint -------------------------------------------------
    result = {}
    timeline["train_end"] = time.time()
    if de.is_main:
        best_path = out / "ckpt" / "best.pt"
        if best_path.exists():
            core.load_state_dict(checkpoint.load(best_path)["model"])
        test, preds = evaluate(core, data.test_batches(), normalizer, names, device, cfg.train.mixed_precision)
        result = {
            "run_id": out.name, "config": C.to_dict(cfg), "test": test, "best": best,
            "n_params": sum(p.numel() for p in core.parameters()),
            "n_train": data.n_train, "steps": step, "epochs": epoch,
            "telemetry": _telemetry(flops_per_crystal, crystals_seen, atoms_seen, train_time, de, device,
                                    step, energy0, cfg.train.mixed_precision),
            "normalizer": normalizer.state(),
        }
        result["telemetry"]["timeline"] = dict(timeline, final=time.time())
        _write_json(out / "predictions.json", preds)
        _write_json(out / "final.json", result)
    if de.world_size > 1:
        dist.barrier()
    distributed.shutdown()
    return result


def optimizer_step(loss, opt, sched, scaler, params, grad_clip) -> None:
    """Backward, (unscale,) clip, step, (scaler update,) schedule step: one optimizer step."""
    opt.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(opt)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt) if scaler else opt.step()
    if scaler:
        scaler.update()
    sched.step()


def _mean_norm_mae(val: dict, normalizer, names) -> float:
    """Validation objective: MAE averaged over properties in standardized units."""
    vals = [val[n]["mae"] / float(normalizer.std[p]) for p, n in enumerate(names)
            if n in val and val[n]["mae"] is not None]
    return sum(vals) / len(vals) if vals else float("inf")


def _agree(flag: bool, de) -> bool:
    """Every rank stops together (rank 0 decides early stopping)."""
    if de.world_size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def _global_sum(loss_sum: float, n: int, de) -> tuple[float, int]:
    """The epoch's loss sum and crystal count over all ranks: the logged train loss is the global mean,
    not rank 0's (one all-reduce per epoch)."""
    if de.world_size == 1:
        return loss_sum, n
    t = torch.tensor([loss_sum, float(n)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]), int(t[1])


def _write_jsonl(path: Path, records: list) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def _telemetry(flops_per_crystal, crystals, atoms, seconds, de, device, steps, energy0=None,
               mixed_precision: str = "none") -> dict:
    from crysbench.train.mfu import mfu, peak_flops

    peak = peak_flops(device, mixed_precision)
    tel = {
        "flops_per_crystal": flops_per_crystal,
        "train_flops": (flops_per_crystal or 0.0) * crystals,
        "graphs_per_s": crystals / seconds if seconds else None,
        "atoms_per_s": atoms / seconds if seconds else None,
        "wall_time_s": seconds, "steps": steps, "world_size": de.world_size, "device": str(device),
        "peak_rss_mb": _peak_rss_mb(),
        "peak_flops_per_device": peak,
        "mfu": mfu((flops_per_crystal or 0.0) * crystals, seconds, de.world_size, peak),
    }
    if device.type == "cuda":
        tel["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        tel["gpu_energy_j"] = energy_since(device, energy0)  # this process, train + eval, this GPU
    return tel


def _process_start() -> float | None:
    """When this process started (unix s, 10 ms resolution; Linux only): the launch-to-Python gap."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])  # btime would round to 1 s
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
