"""Plots: training curve from log.csv, force parity."""

import csv
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curve(log_csv, png) -> None:
    with open(log_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    plt = _plt()
    step = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(step, [float(r["train_force_mae"]) for r in rows], label="train force MAE")
    ax.plot(step, [float(r["val_force_mae"]) for r in rows], label="validation force MAE")
    ax.set_xlabel("step")
    ax.set_ylabel("force MAE (eV/A)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_parity(pred: np.ndarray, ref: np.ndarray, png, title: str = "") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(ref.ravel(), pred.ravel(), s=2, alpha=0.4)
    lim = float(np.max(np.abs(ref))) * 1.05 if ref.size else 1.0
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.set_xlabel("reference force (eV/A)")
    ax.set_ylabel("predicted force (eV/A)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
