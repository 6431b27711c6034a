"""Training on an auxiliary data set (Eq. 11), as the peers do: on its *test* split, where anomalies and masks are.

Defaults are the paper's: Adam, lr 2e-4, 20 epochs, batch 32. Only CTDS, WCMA and SA-MoE parameters are optimized;
the CLIP backbone stays frozen. A checkpoint (trainable weights, safetensors) and the optimizer state (also
safetensors) are saved after every epoch as one all-or-nothing set (:mod:`wmoe.training.checkpoint_set`), so ``resume``
continues from the last saved step even after a crash.
Several GPUs: ``torchrun --nproc_per_node=N -m wmoe train ...`` (DistributedDataParallel; gloo on CPU).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from . import checkpoint_set
from ..atomic import atomic_write_text
from ..model.checkpoint import CheckpointError, checkpoint_meta, read_checkpoint, write_sidecar, write_weights
from ..model.config import ModelConfig
from ..data import AnomalyDataset, DataError, SkippedFiles, collate
from .distributed import DistInfo, barrier, cleanup, init_distributed
from ..errors import NonFiniteError, UsageError
from ..model.expert_health import USAGE_FILE, TrainingHealth, usage_line
from ..folder_lock import FolderLock
from .losses import total_loss
from ..model.wmoe_clip import WMoECLIP
from .optim_state import load_optimizer, write_optimizer


@dataclass
class TrainConfig:
    data_root: str
    out_dir: str = "runs/wmoe"
    meta: Optional[str] = None
    classes: Optional[List[str]] = None
    split: str = "test"  # the peers train on the auxiliary set's test split (it holds the anomalies)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-4
    betas: Sequence[float] = (0.9, 0.999)
    seed: int = 111
    num_workers: int = 0
    amp: Optional[bool] = None  # None: on for CUDA
    device: Optional[str] = None
    max_steps: Optional[int] = None  # stop early (tests, the demo)
    resume: bool = False
    overwrite: bool = False  # replace a run already in out_dir (otherwise refused unless resume)
    log_every: int = 1
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)
    # the resolved command line (wmoe train --print-config's YAML): OUT/config.yaml once the run has started
    run_config: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # the same rules as the CLI's parse-time checks, for callers of the Python API
        bad = [f"{k}={v!r} ({why})" for k, v, ok, why in (
            ("epochs", self.epochs, self.epochs > 0, "> 0"),
            ("batch_size", self.batch_size, self.batch_size > 0, "> 0"),
            ("lr", self.lr, math.isfinite(self.lr) and self.lr > 0, "finite, > 0"),
            ("num_workers", self.num_workers, self.num_workers >= 0, ">= 0"),
            ("max_steps", self.max_steps, self.max_steps is None or self.max_steps > 0, "None or > 0"),
        ) if not ok]
        if bad:
            raise UsageError(f"TrainConfig: {', '.join(bad)}")


RUN_CONFIG = "config.yaml"  # TrainConfig.run_config in the run folder


def _settings(cfg: TrainConfig) -> Dict[str, Any]:
    """The training settings recorded in each checkpoint (``train_config``), JSON types."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "run_config"}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def checkpoint_paths(out_dir: Path) -> "tuple[Path, Path]":
    return out_dir / checkpoint_set.WEIGHTS, out_dir / checkpoint_set.OPTIMIZER


def prepare_run_dir(out_dir: Path, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Finish or clean up an interrupted save, then refuse to silently replace a run that is already there."""
    if resume and overwrite:
        raise CheckpointError("--resume and --overwrite contradict each other: choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"--out {out_dir} is a file, not a folder")
    if is_main:
        for line in checkpoint_set.recover(out_dir):
            print(line)
    if resume or not checkpoint_set.exists(out_dir):
        return
    if not overwrite:
        raise CheckpointError(f"{out_dir} already holds a training run ({out_dir / checkpoint_set.WEIGHTS}); "
                              f"pass --resume to continue it, --overwrite to replace it, or another --out")
    if is_main:
        checkpoint_set.remove(out_dir)


def train(model_cfg: ModelConfig, cfg: TrainConfig, pretrained: Optional[str] = None) -> Path:
    """Train and return the path of the last checkpoint (``OUT/last.safetensors``)."""
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dist_info: DistInfo = init_distributed(device)
    if dist_info.enabled and device.startswith("cuda"):
        device = f"cuda:{dist_info.local_rank}"
    out_dir = Path(cfg.out_dir)
    ckpt_path, optim_path = checkpoint_paths(out_dir)
    lock, failed = None, True
    try:
        if dist_info.is_main and not (out_dir.exists() and not out_dir.is_dir()):
            # one writer per run folder, held for the whole run (a second `wmoe train --out SAME` is refused)
            lock = FolderLock(out_dir, "training run").acquire()
            if lock.stale:
                print(lock.stale)
        prepare_run_dir(out_dir, cfg.resume, cfg.overwrite, dist_info.is_main)
        barrier(dist_info)
        path = _train(model_cfg, cfg, pretrained, device, dist_info, out_dir, ckpt_path, optim_path)
        failed = False
        return path
    finally:
        if lock is not None:  # a run that failed before writing anything leaves no folder it made
            lock.release(discard_if_empty=failed)
        cleanup(dist_info)


def _train(model_cfg: ModelConfig, cfg: TrainConfig, pretrained: Optional[str], device: str, dist_info: DistInfo,
           out_dir: Path, ckpt_path: Path, optim_path: Path) -> Path:
    _seed_all(cfg.seed)
    dataset = AnomalyDataset(cfg.data_root, cfg.meta, split=cfg.split, classes=cfg.classes,
                             image_size=model_cfg.image_size, on_error="skip")
    if len(dataset) == 0:
        raise DataError(f"{cfg.data_root}: the '{cfg.split}' split has no images to train on")
    model = WMoECLIP(model_cfg, pretrained=pretrained).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
    start_step, history = 0, []
    resume_changes: List[Dict[str, Any]] = []
    health = TrainingHealth(model.samoe, model_cfg.moe_balance, model_cfg.moe_repulsion)  # ESB/EIR, utilization
    if cfg.resume:
        if not ckpt_path.is_file():
            raise DataError(f"cannot resume: {ckpt_path} does not exist")
        checkpoint_set.verify(out_dir)  # one complete set from one save, or a message naming the files
        info, tensors = read_checkpoint(ckpt_path)
        if info.config.to_dict() != model_cfg.to_dict():
            raise DataError(f"cannot resume from {ckpt_path}: it was trained with another model config")
        model.load_state_dict(tensors, strict=False)
        resume_changes = _resume_changes(info.extra, cfg, ckpt_path, dist_info.is_main)
        progress, rng = load_optimizer(opt, optim_path)
        start_step, history = int(progress["step"]), list(progress.get("history", []))
        health.load_state(progress.get("expert_health"))
        torch.set_rng_state(rng)
    steps_per_epoch = math.ceil(len(dataset) / (cfg.batch_size * dist_info.world_size))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, int(cfg.max_steps))
    amp = cfg.amp if cfg.amp is not None else device.startswith("cuda")
    train_model: torch.nn.Module = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.startswith("cuda") else None)
    model.train()
    model.backbone.eval()  # frozen: no dropout/batch-norm updates
    skipped = SkippedFiles()
    step = start_step
    bar = None
    if cfg.progress and dist_info.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    if cfg.run_config is not None and dist_info.is_main:  # set up: say how this run was started (--config FILE)
        atomic_write_text(out_dir / RUN_CONFIG, cfg.run_config)
    t0 = time.time()
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        # The order is a function of (seed, epoch): resuming mid-epoch skips the batches already seen.
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        if dist_info.enabled:
            sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True,
                                         seed=cfg.seed, drop_last=False)
            sampler.set_epoch(epoch)
            order = list(sampler)
        else:
            order = torch.randperm(len(dataset), generator=g).tolist()
        order = order[in_epoch * cfg.batch_size:]
        loader = DataLoader(Subset(dataset, order), batch_size=cfg.batch_size, shuffle=False,
                            num_workers=cfg.num_workers, collate_fn=collate,
                            # its own generator: creating a loader must not draw from the global RNG (resume)
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for batch, bad in loader:
            skipped.add(bad)
            if batch is None:
                step += 1
                continue
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            labels = batch["label"].to(device)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.startswith("cuda")):
                out = train_model(images)
            _check_finite(step + 1, cfg, out_dir, scores=out.scores, maps=out.maps)
            terms = total_loss(out, labels, masks, health.regularizers(out.moe_context))
            _check_finite(step + 1, cfg, out_dir, loss=terms["loss"])
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            step += 1
            rec = {k: float(v.detach()) for k, v in terms.items()}
            rec["step"] = step
            history.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{rec[k]:.3f}" for k in ("loss", "global", "local", "kl", "rec") if k in rec})
            end_of_epoch = step % steps_per_epoch == 0
            usage = health.end_epoch(epoch + 1, step) if end_of_epoch else None
            if usage is not None and dist_info.is_main:
                (bar.write if bar is not None else print)(f"epoch {epoch + 1}: {usage_line(usage)}")
            if end_of_epoch or step >= total_steps:
                _save(model, opt, cfg, ckpt_path, optim_path, step, steps_per_epoch, history, skipped, dist_info,
                      time.time() - t0, health, resume_changes)
            if step >= total_steps or end_of_epoch:
                break
    if bar is not None:
        bar.close()
    if step == start_step and dist_info.is_main and not ckpt_path.exists():
        _save(model, opt, cfg, ckpt_path, optim_path, step, steps_per_epoch, history, skipped, dist_info, 0.0, health,
              resume_changes)
    if len(skipped) and dist_info.is_main:
        print(skipped.summary())
    barrier(dist_info)
    return ckpt_path


def _save(model, opt, cfg: TrainConfig, ckpt_path: Path, optim_path: Path, step: int, steps_per_epoch: int,
          history: List[Dict[str, float]], skipped: SkippedFiles, dist_info: DistInfo, seconds: float,
          health: TrainingHealth, resume_changes: Optional[List[Dict[str, Any]]] = None) -> None:
    if not dist_info.is_main:
        return
    tc = _settings(cfg)
    extra = {"step": step, "epoch": step / steps_per_epoch, "train_config": tc, "skipped_files": len(skipped),
             "final_loss": history[-1]["loss"] if history else None, "world_size": dist_info.world_size,
             "train_seconds": round(seconds, 2), **cfg.extra}
    if resume_changes:
        extra["resume_changes"] = resume_changes  # every resume that changed the training setup, with its step
    if health.epochs:
        extra["expert_usage"] = health.epochs[-1]  # the last complete epoch; every epoch: OUT/expert_usage.json
    for name, p in model.trainable_state_dict().items():
        if not torch.isfinite(p).all():  # never let a diverged model replace the last good checkpoint
            raise _diverged(step, f"parameter {name}", cfg, ckpt_path.parent)
    meta = checkpoint_meta(model, extra)
    progress = {"step": step, "history": history[-1000:], "expert_health": health.state()}
    checkpoint_set.save(ckpt_path.parent, step, {
        checkpoint_set.WEIGHTS: lambda p, sid: write_weights(model, p, {**meta, "save_id": sid}),
        checkpoint_set.SIDECAR: lambda p, sid: write_sidecar(p, {**meta, "save_id": sid}),
        checkpoint_set.OPTIMIZER: lambda p, sid: write_optimizer(opt, p, progress, sid),
    })
    health.write(ckpt_path.parent / USAGE_FILE)  # a readable view of progress["expert_health"]


#: training settings that a resume may change, but not silently: the data and its order, the step size
RESUME_WATCHED = ("data_root", "meta", "classes", "split", "batch_size", "lr", "betas", "seed")


def _resume_changes(extra: Dict[str, Any], cfg: TrainConfig, ckpt_path: Path, is_main: bool) -> List[Dict[str, Any]]:
    """The run's record of setup changes at resumes, plus this one's (said as one line when there is one)."""
    before = list(extra.get("resume_changes") or [])
    prev = extra.get("train_config") or {}
    now = _settings(cfg)
    changed = {k: {"was": prev.get(k), "now": now.get(k)} for k in RESUME_WATCHED
               if k in prev and prev.get(k) != now.get(k)}
    if not changed:
        return before
    if is_main:
        what = ", ".join(f"--{k.replace('_', '-')} {v['now']!r} (was {v['was']!r})" for k, v in changed.items())
        note = (" the step count was in batches of the old size, so epochs and the data order shift from here;"
                if "batch_size" in changed else "")
        print(f"resuming {ckpt_path.parent} with a changed setup: {what};{note} recorded in the checkpoint as "
              "resume_changes", flush=True)
    return before + [{"step": int(extra.get("step", 0)), "changes": changed}]


def _diverged(step: int, what: str, cfg: TrainConfig, out_dir: Path) -> NonFiniteError:
    kept = (f"the last good checkpoint in {out_dir} (step {checkpoint_set.verify(out_dir).step}) is kept"
            if (out_dir / checkpoint_set.WEIGHTS).exists() else "no checkpoint was written")
    return NonFiniteError(f"training diverged at step {step}: the {what} became NaN/inf with --lr {cfg.lr:g}; "
                          f"{kept}. Lower --lr or check the data")


def _check_finite(step: int, cfg: TrainConfig, out_dir: Path, **tensors: torch.Tensor) -> None:
    """Stop with a message naming the step when the forward pass or the loss is NaN/inf (e.g. a too-large lr)."""
    for what, t in tensors.items():
        if not torch.isfinite(t.detach()).all():
            raise _diverged(step, what, cfg, out_dir)
