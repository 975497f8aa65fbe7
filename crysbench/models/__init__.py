"""Crystal GNN models, registered by name.

Add a model by subclassing :class:`CrystalModel`, decorating it with ``@register("name")`` and
importing its module at the bottom of this file; ``tests/test_models.py`` then runs the shared
contract test on it.
"""

from __future__ import annotations

from collections.abc import Callable

from crysbench.models._common import CrystalModel, ModelConfig

MODELS: dict[str, type[CrystalModel]] = {}


def register(name: str) -> Callable[[type[CrystalModel]], type[CrystalModel]]:
    """Class decorator adding a model to :data:`MODELS` under ``name``."""

    def add(cls: type[CrystalModel]) -> type[CrystalModel]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is already registered by {MODELS[name].__name__}")
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


def get(name: str) -> type[CrystalModel]:
    """The model class registered as ``name``."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}") from None


def build(name: str, config: ModelConfig | None = None, **overrides) -> CrystalModel:
    """Instantiate model ``name`` from ``config`` (its default config when None) plus overrides."""
    cls = get(name)
    config = cls.Config(**overrides) if config is None else _replace(config, overrides)
    return cls(config)


def _replace(config: ModelConfig, overrides: dict) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(config, **overrides) if overrides else config


from crysbench.models import alignn, cgcnn, crysgnn, equiformer, transformer  # noqa: E402,F401  (registers)

__all__ = ["MODELS", "CrystalModel", "ModelConfig", "build", "get", "register"]
