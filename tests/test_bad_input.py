"""Bad input in the Python engines gives a clear error, never a silently wrong result
(docs/bad-input.md lists each case and its message)."""

from __future__ import annotations

import csv
import os
import stat

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms

from conftest import TINY, morse_frames, tiny_model
from polyget.contract import ModelFileError
from polyget.export import export_model
from polyget.io import atomic_save, load_any, load_model, make_checkpoint
from polyget.train.config import ConfigError, load_config
from polyget.train.dataset import DataError
from polyget.train.trainer import Trainer


def config(data, out, **training):
    return {"data": {"train": str(data), "val_fraction": 0.25},
            "model": dict(TINY),
            "training": {"lr": 2e-3, "batch_size": 4, "max_steps": 2, "val_every": 1, "threads": 1,
                         **training},
            "output": str(out)}


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("unit, factor, expect", [
    ("kcal/mol/A", 23.0605478, "kcal/mol/Angstrom"),
    ("kJ/mol/A", 96.4853322, "kJ/mol/Angstrom"),
    ("Hartree/Bohr", 1 / 51.42208619083232, "Hartree/Bohr"),
])
def test_forces_in_other_units_stop(tmp_path, unit, factor, expect):
    frames = morse_frames(12)
    for a in frames:  # labelled eV/A (the default), but really in `unit`
        a.calc.results["forces"] = a.calc.results["forces"] * factor
    ase.io.write(tmp_path / "d.extxyz", frames)
    with pytest.raises(DataError) as err:
        Trainer(config(tmp_path / "d.extxyz", tmp_path / "r"), quiet=True)
    msg = str(err.value)
    assert "do not look like eV/Angstrom" in msg and f"look like {expect}" in msg, msg
    if expect.endswith("Angstrom"):  # following the advice trains on the right forces
        assert "length_unit" not in msg
        cfg = config(tmp_path / "d.extxyz", tmp_path / "ok")
        cfg["data"].update(energy_unit=expect.rsplit("/", 1)[0])
        tr = Trainer(cfg, quiet=True)
        f = np.concatenate([s.forces.ravel() for s in tr.train_set])
        assert 0.3 < np.median(np.abs(f)) < 0.8
    else:  # positions are Angstrom here: the message says to convert the forces instead
        assert "applies to the positions too" in msg
    # and the check can be turned off for data that really is in eV/A
    cfg = config(tmp_path / "d.extxyz", tmp_path / "off")
    cfg["data"]["check_units"] = False
    Trainer(cfg, quiet=True)


def test_eV_per_angstrom_data_passes_the_unit_check(tmp_path):
    ase.io.write(tmp_path / "d.extxyz", morse_frames(8))
    Trainer(config(tmp_path / "d.extxyz", tmp_path / "r"), quiet=True)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("2.5E-4", 2.5e-4), ("1.0e-3", 1e-3)])
def test_lr_written_as_yaml_string_is_coerced(tmp_path, text, value):
    ase.io.write(tmp_path / "d.extxyz", morse_frames(8))
    (tmp_path / "c.yaml").write_text(
        "data:\n  train: d.extxyz\ntraining:\n  lr: %s\n  max_steps: 2\n  val_every: 1\n"
        "model:\n%s\noutput: run\n" % (text, "".join("  %s: %s\n" % kv for kv in TINY.items())))
    raw = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert isinstance(raw["training"]["lr"], (str, float))
    tr = Trainer(str(tmp_path / "c.yaml"), quiet=True)
    assert tr.opt.param_groups[0]["lr"] == value


@pytest.mark.parametrize("bad, fragment", [
    ({"lr": "fast"}, "training.lr must be a number, got the text 'fast'"),
    ({"lr": 0}, "training.lr must be > 0"),
    ({"lr": [1]}, "training.lr must be a number"),
    ({"weight_decay": "none"}, "training.weight_decay must be a number"),
])
def test_bad_numbers_are_refused(tmp_path, bad, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(config(tmp_path / "d.extxyz", tmp_path / "r", **bad))


def test_empty_dataset_file(tmp_path):
    (tmp_path / "empty.extxyz").write_text("")
    with pytest.raises(DataError, match=r"empty \(0 bytes\)"):
        Trainer(config(tmp_path / "empty.extxyz", tmp_path / "r"), quiet=True)


def test_unreadable_dataset_file(tmp_path):
    (tmp_path / "junk.extxyz").write_text("this is not\nan xyz file\n")
    with pytest.raises(DataError, match="cannot read dataset file"):
        Trainer(config(tmp_path / "junk.extxyz", tmp_path / "r"), quiet=True)


def test_empty_dataset_list(tmp_path):
    with pytest.raises(ConfigError, match="data.train is required"):
        Trainer(config("", tmp_path / "r"), quiet=True)


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "project" / "configs"
    sub.mkdir(parents=True)
    ase.io.write(tmp_path / "project" / "d.extxyz", morse_frames(8))
    (sub / "c.yaml").write_text(yaml.safe_dump({
        "data": {"train": "../d.extxyz"}, "model": dict(TINY),
        "training": {"max_steps": 1, "val_every": 1}, "output": "../runs/x"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(str(sub / "c.yaml"))
    assert cfg["data"]["train"] == str(sub / "../d.extxyz")
    tr = Trainer(str(sub / "c.yaml"), quiet=True)
    tr.run()
    assert (tmp_path / "project" / "runs" / "x" / "last.ckpt").is_file()
    assert not (elsewhere / "runs").exists()


def test_shipped_configs_point_at_existing_data():
    root = os.path.join(os.path.dirname(__file__), "..")
    for name in ("configs/train-mini.yaml", "potentials/polyget-mini.yaml"):
        cfg = load_config(os.path.join(root, name))
        assert os.path.isfile(cfg["data"]["train"]), (name, cfg["data"]["train"])


def test_checkpoints_have_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        ase.io.write(tmp_path / "d.extxyz", morse_frames(8))
        Trainer(config(tmp_path / "d.extxyz", tmp_path / "r"), quiet=True).run()
    finally:
        os.umask(old)
    for name in ("last.ckpt", "best.ckpt"):
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644


# ------------------------------------------------------------------------------- model files
def test_empty_model_file(tmp_path):
    (tmp_path / "m.ckpt").write_bytes(b"")
    (tmp_path / "m.jit.pt").write_bytes(b"")
    for p in ("m.ckpt", "m.jit.pt"):
        with pytest.raises(ModelFileError, match=r"is empty \(0 bytes\)"):
            load_any(tmp_path / p)
    with pytest.raises(ModelFileError, match=r"is empty \(0 bytes\)"):
        load_model(tmp_path / "m.ckpt")


def test_ase_calculator_given_the_mliap_file(tmp_path):
    from polyget.ase import PolyGETCalculator

    pt, jit = export_model(tiny_model(torch.float64), tmp_path / "NAME.pt")
    with pytest.raises(ModelFileError) as err:
        PolyGETCalculator(str(pt))
    msg = str(err.value)
    assert "pair_style mliap unified" in msg and "NAME.jit.pt" in msg and ".ckpt" in msg
    assert "\x1b[" not in msg and "weights_only" not in msg
    PolyGETCalculator(str(jit))  # the advice works


# ---------------------------------------------------------------------------------------- md
@pytest.fixture(scope="module")
def md_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("md")
    atomic_save(make_checkpoint(tiny_model(torch.float64)), d / "m.ckpt")
    return d / "m.ckpt"


def start(tmp_path, positions=None):
    a = morse_frames(1)[0]
    a.calc = None
    if positions is not None:
        a.positions = positions
    ase.io.write(tmp_path / "s.xyz", a)
    return tmp_path / "s.xyz"


def read_rows(out):
    with open(out / "md_log.csv") as fh:
        return list(csv.DictReader(fh))


def test_md_explosion_stops_with_step_atoms_and_reason(md_model, tmp_path):
    """30,000 K with a random model: the watchdog stops it and still writes log and plot."""
    from polyget.md import MDStopped, run_md

    with pytest.raises(MDStopped) as err:
        run_md(str(start(tmp_path)), str(md_model), str(tmp_path / "out"), temperature=30000,
               timestep=1.0, steps=200, interval=5, quiet=True)
    e = err.value
    msg = str(e)
    assert f"stopped at step {e.step} " in msg and e.reason in msg and 0 < e.step < 200
    assert e.reason in ("bond stretch", "temperature runaway", "contact")
    assert len(e.atoms) >= 1 and all(f"{k}" in msg for k in e.atoms[:2])
    rows = read_rows(tmp_path / "out")
    assert int(rows[-1]["step"]) == e.step  # the log reaches the stop
    assert (tmp_path / "out" / "md.png").stat().st_size > 1000
    frames = ase.io.read(tmp_path / "out" / "trajectory.extxyz", ":")
    assert len(frames) == len(rows)


def test_md_watchdog_reasons():
    from polyget.md import Watchdog

    a = morse_frames(1)[0]  # CH3OH
    a.calc = None
    a.set_velocities(np.zeros((len(a), 3)))
    dog = Watchdog(a, 300.0)
    assert dog.check(a) is None
    b = a.copy()
    b.positions[1] = b.positions[0] + 2.5 * (b.positions[1] - b.positions[0])  # stretch O-C/C-O
    reason, atoms, text = dog.check(b)
    assert reason == "bond stretch" and 0 in atoms and 1 in atoms
    c = a.copy()
    c.positions[2] = c.positions[3] + [0.2, 0, 0]
    assert dog.check(c)[0] in ("contact", "bond stretch")
    c = a.copy()
    c.positions[2] = c.positions[3] + [0.2, 0, 0]
    dog_nb = Watchdog(a, 300.0, bond_stretch=0)
    reason, atoms, text = dog_nb.check(c)
    assert reason == "contact" and set(atoms) == {2, 3} and "0.200 A apart" in text
    f = np.zeros((len(a), 3))
    f[4, 1] = np.nan
    reason, atoms, text = dog.check(a, f)
    assert reason == "non-finite forces" and atoms == (4,)
    d = a.copy()
    d.set_velocities(np.full((len(a), 3), 0.5))
    reason, atoms, text = dog.check(d)
    assert reason == "temperature runaway" and "limit 1400 K" in text


def test_md_never_overwrites_without_flag(md_model, tmp_path):
    from polyget.md import run_md

    s = start(tmp_path)
    out = tmp_path / "out"
    run_md(str(s), str(md_model), str(out), steps=4, interval=2, quiet=True)
    before = (out / "trajectory.extxyz").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_md(str(s), str(md_model), str(out), steps=4, interval=2, quiet=True)
    assert (out / "trajectory.extxyz").read_bytes() == before
    run_md(str(s), str(md_model), str(out), steps=6, interval=2, quiet=True, overwrite=True)
    assert len(read_rows(out)) == 4


def test_md_cli_reports_the_stop(md_model, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "polyget.cli", "md", str(start(tmp_path)), "--model",
                        str(md_model), "--temperature", "30000", "--timestep", "1", "--steps", "200",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "polyget md: error: stopped at step" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "o" / "md_log.csv").is_file()
