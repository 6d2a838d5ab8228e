"""Neural network pieces of polyget (one module per concept).

Two backbones share one engine contract (docs/interfaces.md): the Equivariant Transformer
(``PolyGET``, nn/model.py, ``architecture: et``) and SO3krates (nn/so3krates.py,
``architecture: so3krates``). ``build_model(config)`` picks one from ``config.architecture``.
"""

from typing import Dict, Type

from torch import nn

from .model import ModelConfig, PolyGET
from .so3krates import SO3krates

ARCHITECTURES: Dict[str, Type[nn.Module]] = {"et": PolyGET, "so3krates": SO3krates}


def build_model(config: ModelConfig) -> nn.Module:
    """The backbone named by ``config.architecture``, freshly initialised."""
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {config.architecture!r}; choose one of "
                         f"{sorted(ARCHITECTURES)} (model: {{architecture: ...}} in the training config)")
    return ARCHITECTURES[config.architecture](config)


__all__ = ["ARCHITECTURES", "ModelConfig", "PolyGET", "SO3krates", "build_model"]
