"""Generalisation (paper Fig. 7b / Table 6): force MAE and cosine distance of one model on seen
loop sizes (validation frames, L <= 5), unseen 6-loops and held-out families.

    python experiments/generalization.py potentials/polyget-cho-r0.ckpt \
        --splits build/poly24-v1-splits --out experiments/results/generalization

Writes OUT.json (metrics per split, per loop size and per family, with the paper's numbers
beside them) and OUT.png (bar chart).
"""

import argparse
import json
from pathlib import Path

# The paper's numbers (PolyGET on Poly24, PBE labels): Fig. 7b seen / unseen force MAE;
# Table 6 force MAE on the unseen 6-loops. Their labels are PBE, ours GFN2-xTB.
PAPER = {"seen_force_mae": 0.012, "unseen_force_mae_fig7b": 0.013,
         "unseen_force_mae_table6": 0.073}
SPLITS = {"seen (L <= 5, validation)": "val", "unseen 6-loops": "test_size",
          "held-out families": "test_family"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--splits", default="build/poly24-v1-splits")
    p.add_argument("--out", default="experiments/results/generalization")
    p.add_argument("--max-frames", type=int, default=None,
                   help="evaluate at most this many frames per split (evenly spaced)")
    args = p.parse_args(argv)

    from polyget.evaluate import run_eval

    res = {"model": args.checkpoint, "splits": args.splits, "paper": PAPER, "results": {}}
    for name, split in SPLITS.items():
        path = Path(args.splits) / f"{split}.extxyz.gz"
        if not path.exists():
            continue
        data = str(path)
        if args.max_frames:
            from polyget.data.io import read_frames, write_frames
            fr = read_frames(path)
            step = max(1, len(fr) // args.max_frames)
            tmp = Path(args.out + f"-{split}-subset.extxyz")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            write_frames(tmp, fr[::step][: args.max_frames])
            data = str(tmp)
        m = run_eval(args.checkpoint, data, dtype="float32")
        res["results"][name] = {"overall": m["overall"], "per_loop": m.get("per_loop"),
                                "per_family": m.get("per_family")}
        print(f"{name:28s} force MAE {m['overall']['force_mae']:.4f} eV/A  "
              f"CosD {m['overall']['force_cosd']:.4f}  ({m['overall']['n_structures']} frames)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["results"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [res["results"][n]["overall"]["force_mae"] for n in names], color="C0",
           label="polyget (GFN2-xTB labels)")
    ax.axhline(PAPER["seen_force_mae"], color="C1", ls="--", label="paper, seen (PBE)")
    ax.axhline(PAPER["unseen_force_mae_table6"], color="C3", ls=":",
               label="paper Table 6, unseen 6-loops (PBE)")
    ax.set_ylabel("force MAE (eV/A)")
    ax.legend(fontsize=7)
    plt.setp(ax.get_xticklabels(), fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
