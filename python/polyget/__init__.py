"""polyget: force-only Equivariant Transformer force fields for polymers."""

__version__ = "0.1.0"
