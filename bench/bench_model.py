"""CPU/GPU timing of one energy+forces call of the default PolyGET model (paper sizes).

Structure: a 360-atom C120H240 macrocycle (the composition of the cyclooctane 15-loop, CK6),
built with RDKit. Writes bench/results/model_<device>.json and prints a markdown table.

    .venv/bin/python bench/bench_model.py [--device cpu] [--threads 2] [--repeat 5]
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def c120h240():
    from ase import Atoms
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("C1" + "C" * 118 + "C1"))
    params = AllChem.ETKDGv3()
    params.randomSeed = 7
    params.useMacrocycleTorsions = True
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError("RDKit embedding failed")
    pos = mol.GetConformer().GetPositions()
    return Atoms([a.GetSymbol() for a in mol.GetAtoms()], positions=pos)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from polyget.nn import ModelConfig, PolyGET
    from polyget.nn.graph import atoms_to_graph, evaluate

    atoms = c120h240()
    results = []
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = PolyGET(ModelConfig()).to(a.device, dtype).eval()
        g = atoms_to_graph(atoms, model.elements, model.cutoff).to(a.device, dtype)
        for mode in ("eager", "torchscript"):
            m = model if mode == "eager" else torch.jit.script(model)
            evaluate(m, g)  # warm-up
            evaluate(m, g)
            times = []
            for _ in range(a.repeat):
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                evaluate(m, g)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            results.append({"dtype": str(dtype).split(".")[-1], "mode": mode, "natoms": len(atoms),
                            "nedges": int(g.edge_index.shape[1]), "median_s": statistics.median(times),
                            "min_s": min(times)})
    info = {"device": a.device, "threads": a.threads, "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "model": "default (6 layers, 128 features, 8 heads, 32 RBF, 5 A)",
            "results": results}
    out = Path(__file__).parent / "results" / f"model_{a.device.split(':')[0]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(info, indent=2))
    print(f"| dtype | mode | atoms | edges | median s/call (E+F) |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['dtype']} | {r['mode']} | {r['natoms']} | {r['nedges']} | {r['median_s']:.3f} |")


if __name__ == "__main__":
    main()
