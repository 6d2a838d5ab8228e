"""Neural network pieces of polyget (one module per concept)."""

from .model import ModelConfig, PolyGET

__all__ = ["ModelConfig", "PolyGET"]
