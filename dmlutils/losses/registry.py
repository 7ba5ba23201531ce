"""Losses chosen by name (Roth et al.'s registry style): `get_loss("multi_similarity", beta=50)`."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

LOSSES: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a loss to `LOSSES` under `name`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in LOSSES:
            raise ValueError(f"loss name {name!r} is registered twice ({LOSSES[name].__name__}, {cls.__name__})")
        LOSSES[name] = cls
        cls.registry_name = name
        return cls

    return add


def loss_hparam_names(name: str) -> list[str]:
    """The hyper-parameters `get_loss(name, ...)` accepts, in constructor order."""
    return [p for p in inspect.signature(_loss_class(name).__init__).parameters if p != "self"]


def _loss_class(name: str) -> type[nn.Module]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}"
        ) from None


def get_loss(name: str, **hparams) -> nn.Module:
    """Build the loss registered as `name` with the given hyper-parameters."""
    cls = _loss_class(name)
    valid = loss_hparam_names(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for loss {name!r}; "
            f"valid: {', '.join(valid)}"
        )
    return cls(**hparams)


def hparams_of(loss: nn.Module) -> dict:
    """The constructor's hyper-parameters of `loss` and their values (for run records)."""
    names = [p for p in inspect.signature(type(loss).__init__).parameters if p != "self"]
    return {n: getattr(loss, n) for n in names if hasattr(loss, n)}
