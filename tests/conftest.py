"""Shared fixtures: tiny models and synthetic datasets labelled by an analytic potential."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.morse import MorsePotential
from ase.calculators.singlepoint import SinglePointCalculator

from polyget.io import atomic_save, make_checkpoint
from polyget.nn import ModelConfig, PolyGET, build_model

TINY = dict(hidden_channels=32, num_layers=2, num_heads=4, num_rbf=16, cutoff=4.0)


def tiny_model(dtype=torch.float64, seed=0, **kw) -> PolyGET:
    """A tiny ET (or any backbone: architecture="so3krates" in kw)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**TINY, **kw}))
    # non-trivial normalisation so tests exercise it
    model.energy_scale.fill_(0.7)
    model.atom_offsets.copy_(torch.tensor([-13.6, -1029.0, -2041.0]))
    return model.to(dtype).eval()


@pytest.fixture
def model64():
    return tiny_model(torch.float64)


@pytest.fixture
def ckpt_path(tmp_path):
    path = tmp_path / "tiny.ckpt"
    atomic_save(make_checkpoint(tiny_model(torch.float32)), path)
    return path


def polymer_like(seed=0) -> Atoms:
    """A small C/H/O molecule (ethanol + a methyl ether) for quick tests."""
    a = molecule("CH3CH2OH") + molecule("CH3OCH3")
    a.positions[9:] += [3.2, 0.5, 0.3]
    a.rattle(0.05, seed=seed)
    return a


def morse_frames(n=40, seed=0, with_energy=True):
    """Rattled small molecules labelled by a Morse potential (eV, eV/A)."""
    rng = np.random.default_rng(seed)
    calc = MorsePotential(epsilon=0.1, r0=1.3, rho0=4.0, rcut1=3.0, rcut2=3.6)
    frames = []
    names = ["CH3OH", "C2H6", "CH3CH2OH", "H2O", "CH3OCH3"]
    for k in range(n):
        a = molecule(names[k % len(names)])
        a.rattle(0.08, seed=int(rng.integers(1 << 30)))
        a.calc = calc
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e if with_energy else None, forces=f)
        a.info["family"] = names[k % len(names)]
        a.info["loop"] = 1 + k % 3
        frames.append(a)
    return frames


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory):
    """A tiny model trained for 300 steps on Morse-labelled molecules (holds bonds together)."""
    import ase.io

    from polyget.train.trainer import Trainer

    root = tmp_path_factory.mktemp("trained")
    ase.io.write(root / "morse.extxyz", morse_frames(24))
    cfg = {"data": {"train": str(root / "morse.extxyz"), "val_fraction": 0.1}, "model": dict(TINY),
           "training": {"lr": 2e-3, "batch_size": 4, "max_steps": 300, "val_every": 300, "threads": 1},
           "output": str(root / "run")}
    Trainer(cfg, quiet=True).run()
    return root / "run" / "last.ckpt"
