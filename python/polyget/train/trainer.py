"""Force-only (default) or joint training loop with exact resume.

Batches follow a permutation that depends only on (seed, epoch), and the checkpoint stores the
position inside the epoch, so `--resume` replays exactly the batches the interrupted run would
have seen: the next loss is the same number.
"""

import csv
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..io import atomic_save, load_checkpoint, make_checkpoint, parse_dtype
from ..nn import ModelConfig, build_model
from ..nn.graph import evaluate
from .config import load_config
from .dataset import (Batch, DataError, Sample, collate, frames_to_samples, infer_elements, read_frames,
                      split)
from .metrics import MetricAccumulator

LOG_FIELDS = ["step", "epoch", "lr", "train_loss", "train_force_mae", "val_loss", "val_force_mae",
              "val_force_rmse", "val_force_cosd", "elapsed_s"]


def fit_element_offsets(samples: Sequence[Sample], nelem: int, phi: Optional[Sequence[float]] = None,
                        free_scale: bool = False):
    """Least squares E = s * phi + sum_e n_e b_e over samples with energies.

    Returns (offsets [nelem], scale). With phi None, fits E = sum_e n_e b_e (scale 0)."""
    rows = [k for k, s in enumerate(samples) if math.isfinite(s.energy)]
    if not rows:
        raise DataError("no structure in the data has an energy; calibration/joint loss needs some")
    counts = np.array([np.bincount(samples[k].species, minlength=nelem) for k in rows], dtype=np.float64)
    e = np.array([samples[k].energy for k in rows])
    if phi is not None and not free_scale:
        e = e - np.asarray(phi)[rows]
    a = counts
    if phi is not None and free_scale:
        a = np.concatenate([np.asarray(phi)[rows][:, None], counts], axis=1)
    sol, *_ = np.linalg.lstsq(a, e, rcond=None)
    if phi is not None and free_scale:
        return sol[1:], float(sol[0])
    return sol, (1.0 if phi is not None else 0.0)


def batch_loss(model, batch: Batch, train_cfg: Dict[str, Any], create_graph: bool):
    out = evaluate(model, batch.graph, forces=True, create_graph=create_graph)
    diff = out["forces"] - batch.forces
    loss = train_cfg["force_weight"] * (diff ** 2).mean()
    if train_cfg["loss"] == "joint":
        mask = torch.isfinite(batch.energy)
        if mask.any():
            de = (out["energy"][mask] - batch.energy[mask]) / batch.natoms[mask]
            loss = loss + train_cfg["energy_weight"] * (de ** 2).mean()
    return loss, out


class Trainer:
    def __init__(self, config, resume: bool = False, overwrite: bool = False, quiet: bool = False):
        self.cfg = load_config(config)
        self.quiet = quiet
        t = self.cfg["training"]
        self.out = Path(self.cfg["output"])
        self.last_path = self.out / "last.ckpt"
        self.best_path = self.out / "best.ckpt"
        if resume and not self.last_path.exists():
            raise FileNotFoundError(f"--resume: no {self.last_path} to resume from")
        if not resume and self.last_path.exists() and not overwrite:
            raise FileExistsError(f"{self.out} already holds a training run; use --resume to continue it or "
                                  "--overwrite to start again (its checkpoints will be replaced)")
        if t["threads"]:
            torch.set_num_threads(int(t["threads"]))
        self.dtype = parse_dtype(t["dtype"])
        self.device = torch.device(t["device"])

        d = self.cfg["data"]
        frames = read_frames(d["train"])
        elements = d["elements"] or infer_elements(frames)
        init = None
        if t["init_from"]:
            # fine-tuning: the network (architecture, elements, weights, normalisation) is the
            # checkpoint's; the data may use any subset of its elements
            init = load_checkpoint(t["init_from"])
            extra = sorted(set(elements) - set(init["elements"]))
            if extra:
                raise DataError(f"training.init_from {t['init_from']} knows elements {init['elements']}; "
                                f"the data also has {extra}. Fine-tuning cannot add elements: train anew")
            elements = list(init["elements"])
            model_cfg = ModelConfig.from_dict(dict(init["hparams"]))
            self.cfg["model"] = {k: v for k, v in model_cfg.to_dict().items() if k != "elements"}
        else:
            model_cfg = ModelConfig.from_dict({**self.cfg["model"], "elements": list(elements)})
        samples = frames_to_samples(frames, elements, model_cfg.cutoff, d["energy_unit"], d["length_unit"],
                                    check=bool(d["check_units"]))
        self.train_set, self.val_set = split(samples, d["val_fraction"], d["split_by"], d["val_values"], t["seed"])

        torch.manual_seed(t["seed"])
        self.model = build_model(model_cfg)
        f = np.concatenate([s.forces.ravel() for s in self.train_set])
        self.model.energy_scale.fill_(float(np.sqrt(np.mean(f ** 2))) or 1.0)
        if t["loss"] == "joint":
            offsets, _ = fit_element_offsets(self.train_set, len(elements))
            self.model.atom_offsets.copy_(torch.as_tensor(offsets))
        if init is not None:
            self.model.load_state_dict(init["model_state"])
        self.model.to(self.device, self.dtype)
        # exponential moving average of the weights (training.ema_decay > 0): validated, saved as
        # model_state and exported; the raw weights go into the checkpoint for exact resume
        self.ema = None
        if t["ema_decay"]:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(float(t["ema_decay"])),
                                     use_buffers=True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=t["plateau_factor"], patience=t["plateau_patience"], min_lr=t["min_lr"])
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": math.inf, "elapsed_s": 0.0}
        if resume:
            self._load(self.last_path)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.csv", "w", newline="") as fh:
                csv.DictWriter(fh, LOG_FIELDS).writeheader()
            with open(self.out / "config.yaml", "w") as fh:
                import yaml
                yaml.safe_dump({**self.cfg, "data": {**d, "elements": list(elements)}}, fh, sort_keys=False)

    def _compiled_loss(self, batch, t):
        """Force loss of ``batch`` through polyget.compile.CompiledForceLoss (traced and compiled
        at the first call; later batches of other sizes reuse it: dynamic shapes)."""
        if getattr(self, "_compiled", None) is None:
            from ..compile import compiled_force_loss

            if not self.quiet:
                print("training.compile: tracing and compiling the training step (minutes on a CPU)",
                      flush=True)
            self._compiled = compiled_force_loss(self.model, batch.graph)
        return self._compiled(batch.graph, batch.forces, float(t["force_weight"]))

    # ------------------------------------------------------------------ checkpoints
    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation sees and checkpoints export: the average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self) -> Dict[str, Any]:
        extra: Dict[str, Any] = {}
        if self.ema is not None:
            extra["training_weights"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            extra["ema_n_averaged"] = int(self.ema.n_averaged)
        return make_checkpoint(
            self.eval_model, **extra,
            normalisation={"energy_scale": float(self.model.energy_scale),
                           "atom_offsets": self.model.atom_offsets.detach().cpu().tolist()},
            optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
            train_state=dict(self.state), config=self.cfg,
            rng={"torch": torch.get_rng_state()})

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if list(ckpt["elements"]) != list(self.model.elements):
            raise DataError(f"{path} was trained on elements {ckpt['elements']}, the data now gives "
                            f"{self.model.elements}; resume needs the same data")
        if self.ema is not None:
            if "training_weights" not in ckpt:
                raise DataError(f"{path} was written without training.ema_decay; resume with the same setting")
            self.ema.module.load_state_dict(ckpt["model_state"])
            self.ema.n_averaged.fill_(int(ckpt["ema_n_averaged"]))
            self.model.load_state_dict(ckpt["training_weights"])
        else:
            self.model.load_state_dict(ckpt["model_state"])
        self.model.to(self.device, self.dtype)
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.state.update(ckpt["train_state"])
        torch.set_rng_state(ckpt["rng"]["torch"])

    # ------------------------------------------------------------------ loop
    def batches_of_epoch(self, epoch: int) -> List[List[int]]:
        g = torch.Generator().manual_seed(int(self.cfg["training"]["seed"]) * 100003 + epoch)
        perm = torch.randperm(len(self.train_set), generator=g).tolist()
        bs = self.cfg["training"]["batch_size"]
        return [perm[k:k + bs] for k in range(0, len(perm), bs)]

    def validate(self):
        t = self.cfg["training"]
        acc = MetricAccumulator()
        total, n = 0.0, 0
        model = self.eval_model
        model.eval()
        bs = t["batch_size"]
        for k in range(0, len(self.val_set), bs):
            chunk = self.val_set[k:k + bs]
            batch = collate(chunk, self.dtype, self.device)
            loss, out = batch_loss(model, batch, t, create_graph=False)
            total += float(loss.detach()) * len(chunk)
            n += len(chunk)
            f = out["forces"].detach().cpu().double().numpy()
            start = 0
            for s in chunk:
                acc.add(f[start:start + s.natoms], s.forces, s.family, s.loop)
                start += s.natoms
        model.train()
        return total / max(n, 1), acc.summary()

    def run(self, max_steps: Optional[int] = None) -> Dict[str, Any]:
        """Train until training.max_steps (or ``max_steps``, for tests: stop early as if killed)."""
        from tqdm import tqdm

        t = self.cfg["training"]
        stop_at = t["max_steps"] if max_steps is None else min(max_steps, t["max_steps"])
        self.model.train()
        bar = tqdm(total=t["max_steps"], initial=self.state["step"], disable=self.quiet or None,
                   desc="train", unit="step", dynamic_ncols=True)
        start_time = time.time() - self.state["elapsed_s"]
        budget_s = None if t.get("max_hours") is None else 3600.0 * float(t["max_hours"])
        last = {}
        train_loss_acc, train_mae_acc, n_acc = 0.0, 0.0, 0
        while self.state["step"] < stop_at:
            if budget_s is not None and time.time() - start_time >= budget_s:
                self.state["elapsed_s"] = time.time() - start_time
                if n_acc:    # the steps since the last validation are validated and saved
                    self._validate_and_save(train_loss_acc / n_acc, train_mae_acc / n_acc)
                if not self.quiet:
                    bar.write(f"training.max_hours ({t['max_hours']} h) spent at step {self.state['step']}; "
                              f"state saved in {self.last_path} (--resume continues, with a larger "
                              "max_hours)")
                break
            batches = self.batches_of_epoch(self.state["epoch"])
            while (self.state["batch_in_epoch"] < len(batches) and self.state["step"] < stop_at
                   and (budget_s is None or time.time() - start_time < budget_s)):
                idx = batches[self.state["batch_in_epoch"]]
                batch = collate([self.train_set[k] for k in idx], self.dtype, self.device)
                if t["compile"]:
                    # one compiled graph: loss and parameter gradients (in p.grad) together
                    self.opt.zero_grad(set_to_none=True)
                    loss, out = self._compiled_loss(batch, t), None
                else:
                    loss, out = batch_loss(self.model, batch, t, create_graph=True)
                if not torch.isfinite(loss):
                    atomic_save(self.checkpoint(), self.out / "nan-state.ckpt")
                    raise FloatingPointError(
                        f"loss is {float(loss)} at step {self.state['step']}: training diverged. The state "
                        f"before this step is in {self.out / 'nan-state.ckpt'}; lower training.lr or set "
                        "training.grad_clip, then --resume from last.ckpt")
                if out is None:
                    out = {"forces": self._compiled.forces}
                else:
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                if t["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(t["grad_clip"]))
                self.opt.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.state["step"] += 1
                self.state["batch_in_epoch"] += 1
                last["loss"] = float(loss.detach())
                train_loss_acc += float(loss.detach())
                train_mae_acc += float((out["forces"].detach() - batch.forces).abs().mean())
                n_acc += 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}", lr=f"{self.opt.param_groups[0]['lr']:.2e}")
                if self.state["step"] % t["val_every"] == 0 or self.state["step"] == t["max_steps"]:
                    self.state["elapsed_s"] = time.time() - start_time
                    row = self._validate_and_save(train_loss_acc / n_acc, train_mae_acc / n_acc)
                    train_loss_acc, train_mae_acc, n_acc = 0.0, 0.0, 0
                    bar.set_postfix(val_mae=f"{row['val_force_mae']:.4g}")
                    if not self.quiet:  # one line per validation, also in batch-job logs
                        bar.write(f"step {row['step']:>7d}  epoch {row['epoch']:>4d}  lr {row['lr']:.2e}  "
                                  f"train loss {row['train_loss']:.4g}  val force MAE {row['val_force_mae']:.4f} "
                                  f"eV/A  CosD {row['val_force_cosd']:.4f}  ({row['elapsed_s']:.0f} s)")
            if self.state["batch_in_epoch"] >= len(batches):
                self.state["epoch"] += 1
                self.state["batch_in_epoch"] = 0
        bar.close()
        return {"step": self.state["step"], "best_val": self.state["best_val"], "last_loss": last.get("loss")}

    def _validate_and_save(self, train_loss: float, train_mae: float) -> Dict[str, Any]:
        val_loss, summary = self.validate() if self.val_set else (train_loss, {})
        ov = summary.get("overall", {})
        row = {"step": self.state["step"], "epoch": self.state["epoch"], "lr": self.opt.param_groups[0]["lr"],
               "train_loss": train_loss, "train_force_mae": train_mae, "val_loss": val_loss,
               "val_force_mae": ov.get("force_mae", math.nan), "val_force_rmse": ov.get("force_rmse", math.nan),
               "val_force_cosd": ov.get("force_cosd", math.nan), "elapsed_s": self.state["elapsed_s"]}
        self.sched.step(val_loss)
        improved = val_loss < self.state["best_val"]
        if improved:
            self.state["best_val"] = val_loss
        ckpt = self.checkpoint()
        atomic_save(ckpt, self.last_path)
        if improved:
            atomic_save(ckpt, self.best_path)
        with open(self.out / "log.csv", "a", newline="") as fh:
            csv.DictWriter(fh, LOG_FIELDS).writerow(row)
        try:
            from .plots import plot_training_curve
            plot_training_curve(self.out / "log.csv", self.out / "training_curve.png")
        except Exception as exc:  # a plot must never stop training
            print(f"warning: training curve not plotted: {exc}")
        return row


def train(config, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> Dict[str, Any]:
    return Trainer(config, resume=resume, overwrite=overwrite, quiet=quiet).run()
