"""One timed code path of `make bench` (bench/run_bench.py drives several at once).

Runs in its own process (TorchMD-Net in its own venv under build/), so that every path has its
own peak memory and thread settings. Protocol on stdin/stdout, one JSON object per line:

    -> {"cmd": "call"}        <- {"t": seconds of one energy+forces evaluation / MD step}
    -> {"cmd": "quit"}        <- {"maxrss_mb": peak resident memory of this process}

The first line the worker writes is {"ready": true, "load_s": ..., "info": {...}} after loading;
then {"cmd": "first"} makes the first call (answer {"first_s": ...}: the first-call cost,
reported apart; the master sends it once every worker has loaded, one worker at a time, so no
other worker's loading runs beside it), and the timed calls that follow are steady state.

    python bench/bench_worker.py PATH --data FILE.data --threads N --dtype float32 [--model ...]

PATH: tmdnet | eager | ase | native | mliap | plugin | train_ref | train_new
"""

import argparse
import json
import os
import resource
import sys
import time


def read_structure(path):
    import ase.io

    atoms = ase.io.read(path, format="lammps-data", atom_style="atomic")
    symbols = {1: "H", 2: "C", 3: "O"}
    atoms.set_chemical_symbols([symbols[t] for t in atoms.get_array("type")])
    periodic = "melt" in os.path.basename(path)
    atoms.pbc = periodic
    return atoms


def jiggle(atoms, rng, amount=1e-3):
    atoms.positions += rng.uniform(-amount, amount, size=atoms.positions.shape)


# ---------------------------------------------------------------------------------------------
def make_tmdnet(args, atoms):
    import numpy as np
    import torch
    from torchmdnet.models.model import create_model

    hp = json.loads(args.hparams)
    cfg = dict(
        model="equivariant-transformer", embedding_dimension=hp["hidden_channels"],
        num_layers=hp["num_layers"], num_rbf=hp["num_rbf"], rbf_type="expnorm",
        trainable_rbf=False, activation="silu", attn_activation="silu",
        num_heads=hp["num_heads"], distance_influence="both", neighbor_embedding=True,
        cutoff_lower=0.0, cutoff_upper=hp["cutoff"], max_z=100, max_num_neighbors=128,
        derivative=True, output_model="Scalar", prior_model=None, atom_filter=-1,
        reduce_op="add", precision=32 if args.dtype == "float32" else 64, vector_cutoff=True,
        equivariance_invariance_group="O(3)", static_shapes=False, check_errors=False,
        box_vecs=atoms.cell.array.tolist() if atoms.pbc.all() else None,
        long_edge_index=True, seed=0, output_model_noise=None, position_noise_scale=0.0,
        denoising_weight=0.0, dy_weight=1.0, y_weight=0.0, prior_args=None,
    )
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    dt = torch.float32 if args.dtype == "float32" else torch.float64
    model = model.to(dt)
    z = torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.long)
    rng = np.random.default_rng(0)

    def call():
        jiggle(atoms, rng)
        pos = torch.as_tensor(atoms.positions, dtype=dt)
        e, f = model(z, pos, batch=torch.zeros(len(z), dtype=torch.long))
        return float(e.sum()), f

    return call, {"tmdnet": __import__("torchmdnet").__version__ if hasattr(__import__("torchmdnet"), "__version__") else "3.1"}


def make_eager(args, atoms):
    import numpy as np
    import torch

    from polyget.io import load_any
    from polyget.nn.graph import atoms_to_graph, evaluate

    dt = torch.float32 if args.dtype == "float32" else torch.float64
    model, elements, cutoff, _ = load_any(args.model, device="cpu", dtype=dt)
    if args.compile:
        from polyget.compile import compile_model

        model = compile_model(model)
    rng = np.random.default_rng(0)

    def call():
        jiggle(atoms, rng)
        g = atoms_to_graph(atoms, elements, cutoff).to("cpu", dt)
        out = evaluate(model, g)
        return float(out["energy"].sum()), out["forces"]

    return call, {}


def make_ase(args, atoms):
    import numpy as np

    from polyget.ase import PolyGETCalculator

    atoms.calc = PolyGETCalculator(args.model, dtype=args.dtype, compile=bool(args.compile))
    rng = np.random.default_rng(0)

    def call():
        jiggle(atoms, rng)
        f = atoms.get_forces()
        return float(atoms.get_potential_energy()), f

    return call, {}


def make_native(args, atoms):
    import numpy as np

    from polyget.native import NativeModel
    from polyget.nn.graph import atoms_to_graph

    nm = NativeModel(args.jit, device="cpu")
    rng = np.random.default_rng(0)
    info = {"aoti_status": nm.aoti_status, "core_load_s": nm.load_seconds}

    def call():
        jiggle(atoms, rng)
        g = atoms_to_graph(atoms, nm.elements, nm.cutoff)
        e, ae, fij = nm.compute(g.species, g.edge_index, g.edge_vec, len(atoms))
        return float(e), fij

    return call, info


def make_lammps(args, atoms, style):
    import torch
    from lammps import lammps

    torch.set_num_threads(args.threads)
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    if style == "mliap":
        import lammps.mliap

        lammps.mliap.activate_mliappy(lmp)
    periodic = "melt" in os.path.basename(args.data)
    lmp.commands_string(f"""
units metal
atom_style atomic
atom_modify map yes
boundary {'p p p' if periodic else 'f f f'}
read_data {args.data}
mass 1 1.008
mass 2 12.011
mass 3 15.999
""")
    if style == "mliap":
        lmp.commands_string(f"pair_style mliap unified {args.pt} 0\npair_coeff * * H C O")
    else:
        lmp.commands_string(f"plugin load {args.plugin}\n" if args.plugin else "")
        lmp.commands_string(f"newton on\npair_style polyget {args.jit} device cpu threads {args.threads}\n"
                            "pair_coeff * * H C O")
    lmp.commands_string("""
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
timestep 0.0005
fix 1 all nve
thermo 1000
""")
    t0 = time.perf_counter()
    lmp.command("run 0")
    first = time.perf_counter() - t0

    def call():
        lmp.command("run 1 pre no post no")
        return float(lmp.get_thermo("pe")), None

    return call, {"run0_s": first}


def make_train(args, atoms, which):
    import numpy as np
    import torch

    from polyget.nn import ModelConfig, PolyGET
    from polyget.nn.graph import atoms_to_graph, evaluate

    hp = json.loads(args.hparams)
    dt = torch.float32 if args.dtype == "float32" else torch.float64
    torch.manual_seed(0)
    if which == "train_ref":
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        import frozen_et

        model = frozen_et.PolyGET(frozen_et.ModelConfig(**hp))
    else:
        model = PolyGET(ModelConfig(**hp))
    model = model.to(dt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = atoms_to_graph(atoms, ["H", "C", "O"], hp["cutoff"]).to("cpu", dt)
    target = torch.zeros(len(atoms), 3, dtype=dt)
    step = None
    if which == "train_compiled":
        from polyget.compile import compiled_force_loss

        step = compiled_force_loss(model, g)

    def call():
        opt.zero_grad(set_to_none=True)
        if step is not None:
            loss = step(g, target)
        else:
            out = evaluate(model, g, forces=True, create_graph=True)
            loss = ((out["forces"] - target) ** 2).mean()
            loss.backward()
        opt.step()
        return float(loss), None

    return call, {"structures_per_call": 1}


# ---------------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--model", help="checkpoint (eager, ase)")
    p.add_argument("--jit", help="NAME.jit.pt (native, plugin)")
    p.add_argument("--pt", help="NAME.pt (mliap)")
    p.add_argument("--plugin", default="", help="polygetplugin.so to load (plugin)")
    p.add_argument("--hparams", default="{}", help="JSON model hyperparameters (tmdnet, train)")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--compile", type=int, default=0)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    atoms = read_structure(args.data)
    makers = {"tmdnet": make_tmdnet, "eager": make_eager, "ase": make_ase, "native": make_native,
              "mliap": lambda a, at: make_lammps(a, at, "mliap"),
              "plugin": lambda a, at: make_lammps(a, at, "plugin"),
              "train_ref": lambda a, at: make_train(a, at, "train_ref"),
              "train_new": lambda a, at: make_train(a, at, "train_new"),
              "train_compiled": lambda a, at: make_train(a, at, "train_compiled")}
    call, info = makers[args.path](args, atoms)
    load_s = time.perf_counter() - t0
    print(json.dumps({"ready": True, "load_s": load_s, "info": info, "natoms": len(atoms)}),
          flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "first":  # sent once every worker has loaded: nothing else runs then
            t1 = time.perf_counter()
            call()
            print(json.dumps({"first_s": time.perf_counter() - t1}), flush=True)
        elif msg["cmd"] == "call":
            t = time.perf_counter()
            e, _ = call()
            print(json.dumps({"t": time.perf_counter() - t, "e": e}), flush=True)
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            print(json.dumps({"maxrss_mb": rss}), flush=True)
            return


if __name__ == "__main__":
    main()
