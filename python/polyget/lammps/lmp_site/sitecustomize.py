"""Run by the embedded Python of polyget's `lmp` wrapper (see polyget.lammps.errors)."""
try:
    from polyget.lammps.errors import install_excepthook

    install_excepthook()
except Exception:  # never break LAMMPS start-up
    pass
