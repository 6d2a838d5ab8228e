"""Dataset statistics: counts, energy and force distributions per family and loop size, and the
paper's Fig. 2 (per-atom energy vs force distributions per family)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def load(paths) -> list:
    from .io import read_frames

    out = []
    for p in paths:
        out.extend(read_frames(p))
    return out


def _key(a):
    return str(a.info.get("family", "?")), int(a.info.get("loop", 0))


def summarize(frames) -> list[dict]:
    """One row per (family, loop): frames, atoms, energy per atom (mean, std), |F| (mean, max),
    plus a final 'ALL' row."""
    groups = defaultdict(list)
    for a in frames:
        groups[_key(a)].append(a)
    rows = []

    def row(fam, loop, fr):
        epa = np.array([a.get_potential_energy() / len(a) for a in fr])
        fn = np.concatenate([np.linalg.norm(a.get_forces(), axis=1) for a in fr])
        nat = sorted({len(a) for a in fr})
        return {"family": fam, "loop": loop, "frames": len(fr),
                "atoms": nat[0] if len(nat) == 1 else f"{nat[0]}-{nat[-1]}",
                "e_per_atom_mean": float(epa.mean()), "e_per_atom_std": float(epa.std()),
                "force_mean": float(fn.mean()), "force_rms": float(np.sqrt((fn ** 2).mean())),
                "force_max": float(fn.max())}

    for fam, loop in sorted(groups):
        rows.append(row(fam, loop, groups[(fam, loop)]))
    if frames:
        rows.append(row("ALL", -1, frames))
    return rows


def format_table(rows) -> str:
    head = (f"{'family':6s} {'loop':>4s} {'frames':>6s} {'atoms':>7s} {'E/atom eV':>11s} "
            f"{'std':>7s} {'|F| mean':>8s} {'|F| rms':>8s} {'|F| max':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        loop = "all" if r["loop"] == -1 else str(r["loop"])
        lines.append(f"{r['family']:6s} {loop:>4s} {r['frames']:6d} {str(r['atoms']):>7s} "
                     f"{r['e_per_atom_mean']:11.4f} {r['e_per_atom_std']:7.4f} "
                     f"{r['force_mean']:8.3f} {r['force_rms']:8.3f} {r['force_max']:8.3f}")
    return "\n".join(lines)


def plot_fig2(frames, path: str) -> None:
    """Per family: per-atom energy (relative to the family's mean) against mean |F| per frame,
    with marginal histograms of both (the paper's Fig. 2 idea)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for a in frames:
        groups[str(a.info.get("family", "?"))].append(a)
    fams = sorted(groups)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, f in enumerate(fams):
        fr = groups[f]
        epa = np.array([a.get_potential_energy() / len(a) for a in fr])
        epa = epa - epa.mean()
        fm = np.array([np.linalg.norm(a.get_forces(), axis=1).mean() for a in fr])
        fn = np.concatenate([np.linalg.norm(a.get_forces(), axis=1) for a in fr])
        c = cmap(i % 20)
        axes[0].scatter(epa, fm, s=6, color=c, label=f, alpha=0.7)
        axes[1].hist(epa, bins=30, histtype="step", color=c, density=True)
        axes[2].hist(fn, bins=40, histtype="step", color=c, density=True)
    axes[0].set_xlabel("per-atom energy - family mean (eV/atom)")
    axes[0].set_ylabel("mean |F| per frame (eV/A)")
    axes[1].set_xlabel("per-atom energy - family mean (eV/atom)")
    axes[1].set_ylabel("density")
    axes[2].set_xlabel("|F| per atom (eV/A)")
    axes[2].set_ylabel("density")
    axes[0].legend(fontsize=7, ncol=2)
    method = frames[0].info.get("method", "") if frames else ""
    fig.suptitle(f"Energy and force distributions per family ({method}, {len(frames)} frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(ref, other) -> dict:
    """Force/energy agreement of two labellings of the same frames (matched by info frame_id),
    e.g. PBE (ref) vs GFN2-xTB, or a model's predictions vs reference labels.

    Energies are compared after removing the mean offset per family (different methods have
    different zero points): 'energy_mae_per_atom' is the MAE of (E_other - E_ref)/N minus its
    family mean."""
    by_id = {a.info.get("frame_id"): a for a in other}
    pairs = [(a, by_id[a.info.get("frame_id")]) for a in ref if a.info.get("frame_id") in by_id]
    if not pairs:
        raise ValueError("no frames with a common info['frame_id']")
    fr = np.concatenate([a.get_forces().ravel() for a, _ in pairs])
    fo = np.concatenate([b.get_forces().ravel() for _, b in pairs])
    d = np.array([(b.get_potential_energy() - a.get_potential_energy()) / len(a)
                  for a, b in pairs])
    fams = np.array([str(a.info.get("family", "?")) for a, _ in pairs])
    for f in set(fams):
        d[fams == f] -= d[fams == f].mean()
    return {"frames": len(pairs), "force_mae": float(np.abs(fo - fr).mean()),
            "force_rmse": float(np.sqrt(((fo - fr) ** 2).mean())),
            "force_r": float(np.corrcoef(fr, fo)[0, 1]),
            "mean_abs_force_ref": float(np.abs(fr).mean()),
            "energy_mae_per_atom": float(np.abs(d).mean())}


def sampler_report(outdir) -> dict:
    """Cost per kept frame and force distribution per sampler, from a `generate` output folder
    (frames/*.timing.json and frames/*.extxyz).

    Returns {"cost": {sampler: {...}}, "forces": {family: {sampler: {...}}}}. Seconds are wall
    seconds of the worker process (reference calls and cheap dynamics separately)."""
    import json
    from pathlib import Path

    from .io import read_complete

    out = Path(outdir)
    cost: dict = {}
    for tp in sorted((out / "frames").glob("*.timing.json")):
        for name, s in json.loads(tp.read_text()).get("samplers", {}).items():
            c = cost.setdefault(name, {"kept": 0, "label_calls": 0, "label_s": 0.0,
                                       "dynamics_s": 0.0, "duplicates": 0, "rejected": 0})
            for k in c:
                c[k] += s.get(k, 0)
    for c in cost.values():
        c["calls_per_kept"] = c["label_calls"] / max(c["kept"], 1)
        c["seconds_per_kept"] = (c["label_s"] + c["dynamics_s"]) / max(c["kept"], 1)
    forces: dict = {}
    for fp in sorted((out / "frames").glob("*.extxyz")):
        for a in read_complete(fp, truncate=False):
            fam, smp = str(a.info.get("family", "?")), str(a.info.get("config_type", "?"))
            forces.setdefault(fam, {}).setdefault(smp, []).append(
                np.linalg.norm(a.get_forces(), axis=1))
    fstats = {fam: {smp: {"frames": len(v), "mean": float(np.concatenate(v).mean()),
                          "p50": float(np.percentile(np.concatenate(v), 50)),
                          "p99": float(np.percentile(np.concatenate(v), 99)),
                          "max": float(np.concatenate(v).max())}
                    for smp, v in d.items()} for fam, d in forces.items()}
    return {"cost": cost, "forces": fstats}


def format_sampler_report(rep: dict) -> str:
    """Markdown tables of `sampler_report`."""
    lines = ["| sampler | kept frames | reference calls / kept frame | label s | dynamics s | "
             "s / kept frame | near-duplicates dropped | broken geometries dropped |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in sorted(rep["cost"].items()):
        lines.append(f"| {name} | {c['kept']} | {c['calls_per_kept']:.1f} | {c['label_s']:.0f} | "
                     f"{c['dynamics_s']:.0f} | {c['seconds_per_kept']:.3f} | {c['duplicates']} | "
                     f"{c['rejected']} |")
    smps = sorted({s for d in rep["forces"].values() for s in d})
    lines += ["", "|F| per atom (eV/A), mean / 99th percentile, per family and sampler:", "",
              "| family | " + " | ".join(smps) + " |", "|---|" + "---|" * len(smps)]
    for fam in sorted(rep["forces"]):
        d = rep["forces"][fam]
        cells = [f"{d[s]['mean']:.2f} / {d[s]['p99']:.2f}" if s in d else "-" for s in smps]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
