"""Builders: families table, ring-opening, loop atom counts/formulas, 3D sanity, bad input."""

import pytest

pytest.importorskip("rdkit")

from rdkit import Chem  # noqa: E402
from rdkit.Chem.rdMolDescriptors import CalcMolFormula  # noqa: E402

from polyget.data import build as B  # noqa: E402
from polyget.data.cli import main as data_main  # noqa: E402
from polyget.data.families import (FAMILIES, PAPER_15_LOOPS, get_family,  # noqa: E402
                                   parse_families)


def n_atoms(smiles, L):
    return Chem.AddHs(B.loop_mol(smiles, L)).GetNumAtoms()


def test_families_table_matches_paper():
    assert len(FAMILIES) == 24
    assert list(FAMILIES)[:7] == ["CK1", "CK2", "CK3", "CK4", "CK5", "CK6", "ETH"]
    assert [k for k in FAMILIES if k.startswith("LAC")] == [f"LAC{i}" for i in range(1, 10)]
    assert [k for k in FAMILIES if k.startswith("OTH")] == [f"OTH{i}" for i in range(1, 9)]
    # Table 1 "# Atoms" column (monomer atoms, H included)
    paper = [9, 12, 15, 18, 21, 24, 7, 9, 12, 13, 15, 16, 18, 18, 30, 30,
             18, 13, 21, 24, 27, 30, 33, 42]
    assert [f.n_atoms for f in FAMILIES.values()] == paper
    for f in FAMILIES.values():
        assert n_atoms(f.smiles, 1) == f.n_atoms, f.index
        assert set(CalcMolFormula(Chem.MolFromSmiles(f.smiles))) <= set("CHO0123456789")
    assert {f.category for f in FAMILIES.values()} == {"cycloalkane", "ether", "lactone", "other"}
    assert [f.index for f in parse_families("ether,CK1,ck1")] == ["ETH", "CK1"]
    with pytest.raises(KeyError, match="XYZ9"):
        get_family("XYZ9")


@pytest.mark.parametrize("fam,formula1,formula3", [
    ("CK1", "C3H6", "C9H18"),
    ("ETH", "C2H4O", "C6H12O3"),
    ("LAC1", "C3H4O2", "C9H12O6"),
    ("LAC2", "C4H6O2", "C12H18O6"),
    ("LAC5", "C5H8O3", "C15H24O9"),
    ("OTH2", "C5H6O2", "C15H18O6"),
    ("LAC9", "C10H18O2", "C30H54O6"),
    ("OTH8", "C14H26O2", "C42H78O6"),
])
def test_loop_formulas(fam, formula1, formula3):
    smi = get_family(fam).smiles
    assert B.formula(smi, 1) == formula1
    assert B.formula(smi, 3) == formula3
    for L in (2, 4, 5, 6):
        assert n_atoms(smi, L) == L * get_family(fam).n_atoms
    # the loop is one ring more than... exactly: one macrocycle, rings = monomer rings
    m = B.loop_mol(smi, 4)
    assert len(Chem.GetMolFrags(m)) == 1
    assert m.GetRingInfo().NumRings() == Chem.MolFromSmiles(smi).GetRingInfo().NumRings()


def test_paper_15_loop_atom_counts():
    assert PAPER_15_LOOPS == {"CK6": 360, "OTH4": 360, "LAC2": 180, "LAC5": 240}
    for fam, nat in PAPER_15_LOOPS.items():
        assert n_atoms(get_family(fam).smiles, 15) == nat


def test_ring_opening_repeat_units():
    assert B.repeat_unit_smiles("C1CO1") == "*OCC*"               # ether: C-O bond
    assert B.repeat_unit_smiles("O=C1CCCO1") == "*OCCCC(*)=O"     # lactone: acyl-O bond
    assert B.repeat_unit_smiles("C1CCCCC1") == "*CCCCCC*"
    assert B.repeat_unit_smiles("C=C1CCOC1=O") == "*OCCC(=C)C(*)=O"
    # L = 1 closes the repeat unit back into the monomer
    for f in FAMILIES.values():
        assert B.loop_smiles(f.smiles, 1) == Chem.CanonSmiles(f.smiles), f.index
    # head-to-tail esters: a 3-loop of a lactone has 3 ester groups, all in the ring
    m = B.loop_mol("O=C1CCCCO1", 3)
    patt = Chem.MolFromSmarts("[CR](=O)[OR][CR]")
    assert len(m.GetSubstructMatches(patt)) == 3
    assert B.loop_smiles("O=C1CCCCO1", 2) == "O=C1CCCCOC(=O)CCCCO1"
    # user override with atom maps: open the C3-C4 bond of delta-valerolactone instead
    assert B.repeat_unit_smiles("O=C1OCC[CH2:1][CH2:2]1") == "*CC(=O)OCCC*"


def test_stereo_is_carried_into_every_repeat_unit():
    for fam in ("LAC5", "LAC7", "LAC9", "OTH4"):
        smi = get_family(fam).smiles
        mono = Chem.FindMolChiralCenters(Chem.MolFromSmiles(smi), useLegacyImplementation=False)
        loop = Chem.FindMolChiralCenters(B.loop_mol(smi, 4), useLegacyImplementation=False)
        assert len(loop) == 4 * len(mono)
        # every unit has the same labels as the others
        labels = [lab for _, lab in loop]
        k = len(mono)
        assert all(labels[i * k:(i + 1) * k] == labels[:k] for i in range(4)), (fam, loop)
    assert [lab for _, lab in Chem.FindMolChiralCenters(B.loop_mol(get_family("LAC9").smiles, 1),
                                                        useLegacyImplementation=False)] \
        == ["S", "R"]


@pytest.mark.parametrize("fam,L", [("CK1", 1), ("CK1", 3), ("ETH", 5), ("LAC2", 4),
                                   ("LAC3", 6), ("LAC5", 3), ("OTH2", 6), ("LAC9", 2),
                                   ("CK6", 3)])
def test_built_structures_are_sane(fam, L):
    confs = B.build(fam, L, n_conf=2, seed=7)
    f = get_family(fam)
    assert len(confs) == 2
    for at in confs:
        assert len(at) == L * f.n_atoms
        assert at.info["family"] == fam and at.info["loop"] == L
        assert at.info["smiles"] == f.smiles
        assert B.min_pair_distance(at) > 0.7
        assert B.n_fragments(at) == 1
        assert sorted(set(at.get_chemical_symbols())) <= ["C", "H", "O"]
    # formula from 3D atoms equals RDKit's
    assert confs[0].get_chemical_formula(mode="hill") == B.formula(f.smiles, L)
    # the seed makes it reproducible
    again = B.build(fam, L, n_conf=1, seed=7)[0]
    assert abs(again.positions - confs[0].positions).max() < 1e-8


def test_15_loop_embeds_as_one_molecule():
    at = B.build("LAC2", 15, n_conf=1, seed=0)[0]
    assert len(at) == 180
    assert at.get_chemical_formula(mode="hill") == "C60H90O30"
    assert B.min_pair_distance(at) > 0.7
    assert B.n_fragments(at) == 1


@pytest.mark.parametrize("smiles,match", [
    ("C1CC(", "invalid SMILES 'C1CC\\('"),
    ("CCOC(=O)C", "'CCOC\\(=O\\)C' has no ring"),
    ("c1ccccc1", "'c1ccccc1' has no non-aromatic single ring bond"),
    ("", "empty monomer SMILES"),
    ("[O-]C1CC1", "charged"),
])
def test_bad_monomers_give_clear_errors(smiles, match):
    with pytest.raises(B.BuildError, match=match):
        B.build(smiles, 3)


def test_bad_monomer_from_cli(capsys, tmp_path):
    rc = data_main(["build", "CCO", "--loops", "3", "-o", str(tmp_path / "x.extxyz")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'CCO' has no ring, so it cannot ring-open" in err
    rc = data_main(["build", "LAC2", "C1CO1", "--loops", "1,3", "-o",
                    str(tmp_path / "ok.extxyz")])
    assert rc == 0
    import ase.io
    frames = ase.io.read(tmp_path / "ok.extxyz", ":")
    assert [len(a) for a in frames] == [12, 36, 7, 21]
    assert [a.info["family"] for a in frames] == ["LAC2", "LAC2", "custom", "custom"]
    assert frames[3].info["smiles"] == "C1CO1"
