"""Energies from a force-only model (paper section 2.2, eq. 3, Fig. 8): how well the network's
uncalibrated output Phi maps to reference energies on polymers it never saw.

    python experiments/energies.py potentials/polyget-cho-r0.ckpt \
        --splits build/poly24-v1-splits --out experiments/results/energies-cho

Three calibrations, all scored on frames that did not take part in the fit, in meV/atom:

- per polymer (the paper's eq. 3): for each (family, loop) system, E = W Phi + b fitted on 8
  reference conformations of that system, MAE on the system's other frames;
- per polymer, offset only (W = 1): E = Phi + b on the same 8 conformations (does the learned
  force field integrate to the right energy scale without a fitted slope?);
- per element (transferable, `polyget calibrate --mode elements`): E = Phi + sum_e n_e b_e,
  offsets fitted on training frames only, applied unchanged to held-out families and 6-loops
  (no reference energy of the new polymer at all).

Also the cosine distance between Phi and E per system (Fig. 8a; the paper: 0.0067 averaged over
polymers, 0.0006 eV/atom after the per-polymer transform), and the correlation after
centring per system. Writes OUT.json and OUT.png (per-system MAE bars for the held-out sets).
"""

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

PAPER = {"per_polymer_mae_ev_per_atom": 0.0006, "raw_cosine_distance": 0.0067,
         "note": "PolyGET on Poly24 with PBE labels, 8 conformations per polymer (Fig. 8)"}
SPLITS = {"held-out families": "test_family", "unseen 6-loops": "test_size",
          "seen (validation)": "val"}


def phi_and_energy(model, frames):
    """Uncalibrated output Phi (no per-element offsets), reference energy, atom count, element
    counts, (family, loop) key, per frame."""
    from polyget.evaluate import predict
    from polyget.train.dataset import frames_to_samples

    samples = frames_to_samples(frames, model.elements, model.cutoff, "eV", "Angstrom")
    samples = [s for s in samples if math.isfinite(s.energy)]
    raw = {id(s): phi for s, _, phi, _ in predict(model, samples)}
    nel = len(model.elements)
    return [{"phi": float(raw[id(s)]), "e": float(s.energy), "n": int(s.natoms),
             "counts": np.bincount(s.species, minlength=nel).astype(float),
             "key": f"{s.family}/L{s.loop}"} for s in samples]


def per_system(rows, n_ref, rng):
    groups = defaultdict(list)
    for r in rows:
        groups[r["key"]].append(r)
    out = {}
    for key, g in sorted(groups.items()):
        if len(g) <= n_ref:
            continue
        idx = rng.permutation(len(g))
        ref, rest = [g[k] for k in idx[:n_ref]], [g[k] for k in idx[n_ref:]]
        pr, er = np.array([r["phi"] for r in ref]), np.array([r["e"] for r in ref])
        p, e = np.array([r["phi"] for r in rest]), np.array([r["e"] for r in rest])
        n = g[0]["n"]
        w, b = np.linalg.lstsq(np.stack([pr, np.ones_like(pr)], 1), er, rcond=None)[0]
        b1 = float(np.mean(er - pr))
        pa, ea = np.array([r["phi"] for r in g]), np.array([r["e"] for r in g])
        cosd = 1.0 - float(pa @ ea / (np.linalg.norm(pa) * np.linalg.norm(ea)))
        pc, ec = pa - pa.mean(), ea - ea.mean()
        corr = float(pc @ ec / (np.linalg.norm(pc) * np.linalg.norm(ec) + 1e-300))
        out[key] = {"frames": len(g), "atoms": n, "W": float(w), "b": float(b),
                    "mae_mev_per_atom_linear": 1e3 * float(np.mean(np.abs(w * p + b - e))) / n,
                    "mae_mev_per_atom_offset": 1e3 * float(np.mean(np.abs(p + b1 - e))) / n,
                    "spread_mev_per_atom": 1e3 * float(np.std(e)) / n,
                    "raw_cosine_distance": cosd, "centred_correlation": corr}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--splits", default="build/poly24-v1-splits")
    p.add_argument("--out", default="experiments/results/energies")
    p.add_argument("--n-ref", type=int, default=8, help="reference conformations per polymer (eq. 3)")
    p.add_argument("--train-frames", type=int, default=3000,
                   help="training frames (evenly spaced) for the per-element offsets")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from polyget.data.io import read_frames
    from polyget.io import load_checkpoint, model_from_checkpoint

    torch.set_num_threads(1)
    model = model_from_checkpoint(load_checkpoint(args.checkpoint)).eval()
    sp = Path(args.splits)
    train = read_frames(sp / "train.extxyz.gz")
    train = train[:: max(1, len(train) // args.train_frames)][: args.train_frames]
    tr = phi_and_energy(model, train)
    a = np.stack([r["counts"] for r in tr])
    y = np.array([r["e"] - r["phi"] for r in tr])
    offsets = np.linalg.lstsq(a, y, rcond=None)[0]
    res = {"model": args.checkpoint, "paper": PAPER, "n_ref": args.n_ref,
           "element_offsets": dict(zip(model.elements, map(float, offsets))),
           "train_frames_for_offsets": len(tr), "splits": {}}
    rng = np.random.default_rng(args.seed)
    for name, split in SPLITS.items():
        rows = phi_and_energy(model, read_frames(sp / f"{split}.extxyz.gz"))
        el = [1e3 * abs(r["phi"] + r["counts"] @ offsets - r["e"]) / r["n"] for r in rows]
        systems = per_system(rows, args.n_ref, rng)
        summ = {k: float(np.mean([s[k] for s in systems.values()])) for k in
                ("mae_mev_per_atom_linear", "mae_mev_per_atom_offset", "spread_mev_per_atom",
                 "raw_cosine_distance", "centred_correlation")}
        res["splits"][name] = {"frames": len(rows), "systems": len(systems),
                               "per_element_mae_mev_per_atom": float(np.mean(el)),
                               "per_system_mean": summ, "per_system": systems}
        print(f"{name}: {len(rows)} frames, {len(systems)} systems; per-polymer W Phi + b "
              f"{summ['mae_mev_per_atom_linear']:.2f} meV/atom, offset only "
              f"{summ['mae_mev_per_atom_offset']:.2f}, per-element {np.mean(el):.2f} "
              f"(energy spread {summ['spread_mev_per_atom']:.2f}); raw CosD "
              f"{summ['raw_cosine_distance']:.2e}, centred r {summ['centred_correlation']:.3f}",
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, name in zip(axes, ["held-out families", "unseen 6-loops"]):
        systems = res["splits"][name]["per_system"]
        keys = list(systems)
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [systems[k]["mae_mev_per_atom_linear"] for k in keys], 0.4, label="W Phi + b (eq. 3)")
        ax.bar(x + 0.2, [systems[k]["spread_mev_per_atom"] for k in keys], 0.4, label="std of E (no model)")
        ax.axhline(PAPER["per_polymer_mae_ev_per_atom"] * 1e3, color="k", ls="--", lw=1, label="paper (PBE)")
        ax.set_xticks(x)
        ax.set_xticklabels(keys, rotation=90, fontsize=7)
        ax.set_ylabel("energy MAE (meV/atom)")
        ax.set_title(f"{name}: per-polymer calibration, {args.n_ref} conformations")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
