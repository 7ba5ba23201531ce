"""Losses chosen by name (Roth et al.'s registry style): `get_loss("multi_similarity", beta=50)`."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

LOSSES: dict[str, type[nn.Module]] = {}

# Options every loss takes from its base class (`base.MetricLoss`), besides its own
# hyper-parameters. They change no loss value — only whether a degenerate batch warns or
# raises — so they are not hyper-parameters: `loss_hparam_names` does not list them (no
# profile tunes them) and `hparams_of` leaves them out of run records.
BASE_OPTIONS = ("strict",)


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a loss to `LOSSES` under `name`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in LOSSES:
            raise ValueError(f"loss name {name!r} is registered twice ({LOSSES[name].__name__}, {cls.__name__})")
        LOSSES[name] = cls
        cls.registry_name = name
        return cls

    return add


def _constructor_parameters(cls: type[nn.Module]) -> list[inspect.Parameter]:
    """The constructor's hyper-parameters (not `self`, not the base options), in order."""
    return [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.name not in BASE_OPTIONS
    ]


def loss_hparam_names(name: str) -> list[str]:
    """The hyper-parameters `get_loss(name, ...)` accepts, in constructor order (without the
    base options, `BASE_OPTIONS`, which every loss also accepts)."""
    return [p.name for p in _constructor_parameters(_loss_class(name))]


def required_hparam_names(name: str) -> list[str]:
    """The hyper-parameters of loss `name` that have no default (`get_loss` must be given them)."""
    return [p.name for p in _constructor_parameters(_loss_class(name)) if p.default is inspect.Parameter.empty]


def _loss_class(name: str) -> type[nn.Module]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}"
        ) from None


def get_loss(name: str, **hparams) -> nn.Module:
    """Build the loss registered as `name` with the given hyper-parameters (and base
    options, e.g. `strict=True`)."""
    cls = _loss_class(name)
    valid = loss_hparam_names(name)
    unknown = sorted(set(hparams) - set(valid) - set(BASE_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for loss {name!r}; "
            f"valid: {', '.join(valid)} (and the option{'s' if len(BASE_OPTIONS) > 1 else ''} "
            f"{', '.join(BASE_OPTIONS)} of every loss)"
        )
    missing = [n for n in required_hparam_names(name) if n not in hparams]
    if missing:
        # Python's own TypeError ("__init__() missing 2 required positional arguments")
        # names neither the loss nor get_loss; say both, with the full signature.
        signature = inspect.signature(cls.__init__, eval_str=True)
        signature = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "self"])
        raise ValueError(
            f"loss {name!r} needs {', '.join(missing)} (no default): call "
            f"get_loss({name!r}, {', '.join(f'{n}=...' for n in missing)}); "
            f"its arguments: {cls.__name__}{signature}"
        )
    return cls(**hparams)


def hparams_of(loss: nn.Module) -> dict:
    """The constructor's hyper-parameters of `loss` and their values (for run records; the
    base options such as `strict` are not hyper-parameters and are left out)."""
    names = [p.name for p in _constructor_parameters(type(loss))]
    return {n: getattr(loss, n) for n in names if hasattr(loss, n)}
