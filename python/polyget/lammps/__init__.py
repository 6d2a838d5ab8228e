"""LAMMPS integration: the ML-IAP unified model (``mliap``) and deck error messages (``errors``).

``pair_style mliap unified NAME.pt 0|1`` loads ``polyget.lammps.mliap.PolyGETMLIAP``; the file
is written by ``python python/export.py CKPT -o NAME.pt``.
"""
