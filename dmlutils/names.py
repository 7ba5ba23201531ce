"""How the book names a method and its setting for a reader, in one place.

Registry keys (`lifted_structure`, `centre_lr_1e-2`) name files and runs; readers of the
paper say Lifted Structure and "centre lr 0.01". Every table, figure and sentence of the
chapters takes its names from here (a setting study's candidates through
`studies.candidate_name`, the manifest's runs through `manifest.label`):

    >>> method_name("lifted_structure", {"loss.scale": 20.0})
    'Lifted Structure (scale 20)'
    >>> method_name("triplet_center", {"loss_lr": 1e-2})
    'Triplet-Center (centre lr 0.01)'
    >>> setting_text({"lr": 1e-5, "head_lr": 1e-5})
    'lr 1e-5'
"""
from __future__ import annotations

import re

# Each loss as its paper (or the MS paper's survey of it) names it.
LOSS_NAMES = {
    "multi_similarity": "Multi-Similarity",
    "contrastive": "Contrastive",
    "triplet": "Triplet",
    "triplet_center": "Triplet-Center",
    "npair": "N-pair",
    "quadruplet": "Quadruplet",
    "lifted_structure": "Lifted Structure",
    "binomial_deviance": "Binomial Deviance",
    "ranked_list": "Ranked List",
}
BASELINE = "pretrained features, no training"  # the run without a loss

# How a sentence writes a setting a run changes: {override key: format of its value}.
# `loss_lr` is the learning rate of a loss's own parameters: `LOSS_PARAMETERS` names them.
SETTING_TEXT = {
    "loss.beta": "β = {}", "loss.alpha": "α = {}", "loss.lam": "λ = {}", "loss.epsilon": "ε = {}",
    "loss.scale": "scale {}", "loss.margin": "margin {}", "loss.pos_margin": "positive margin {}",
    "loss.neg_margin": "negative margin {}", "loss_lr": "{parameters} lr {}",
    "lr": "backbone lr {}", "head_lr": "head lr {}", "warmup_iterations": "warm-up {}", "iterations": "{} iterations",
    "embedding_dim": "{}-d", "xbm_size": "MS + XBM {:,}",
}
# Values that read as words rather than numbers.
VALUE_TEXT = {("loss.reduction", "nonzero_mean"): "mean over non-zero pairs", ("loss.reduction", "mean"): "mean over all pairs"}
LOSS_PARAMETERS = {"triplet_center": "centre"}  # the only loss with parameters of its own: its class centres
IGNORED = ("xbm_start",)  # the memory's warm-up: a detail of the memory, not a second setting


def loss_name(loss: str | None) -> str:
    """'Multi-Similarity' for `multi_similarity`; the baseline's name for None."""
    if loss is None or loss == "baseline":
        return BASELINE
    try:
        return LOSS_NAMES[loss]
    except KeyError:
        raise ValueError(f"no reader's name for loss {loss!r}: add it to dmlutils.names.LOSS_NAMES "
                         f"(named now: {', '.join(sorted(LOSS_NAMES))})") from None


def number(value) -> str:
    """A setting's value as a reader writes it: 20, 0.01, 1e-5 (not 20.0, 1e-02, 1e-05)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'-' if m.group(1) == '-' else ''}{m.group(2)}", f"{value:g}")


def setting_text(overrides: dict, loss: str | None = None) -> str:
    """What `overrides` change, as a reader writes it ("scale 20", "β = 10", "40 x 2");
    '' for none. A backbone and head rate set to one value read as one "lr"."""
    settings = {k: v for k, v in overrides.items() if k not in IGNORED}
    parts = []
    if {"p", "k"} <= settings.keys():
        parts.append(f"{settings.pop('p')} x {settings.pop('k')}")
    if "lr" in settings and settings.get("head_lr") == settings["lr"]:
        settings.pop("head_lr")
        parts.append(f"lr {number(settings.pop('lr'))}")
    for key, value in settings.items():
        if (key, value) in VALUE_TEXT:
            parts.append(VALUE_TEXT[key, value])
        elif key in SETTING_TEXT:
            template = SETTING_TEXT[key].replace("{parameters}", LOSS_PARAMETERS.get(loss, "loss parameters"))
            parts.append(template.format(value) if ":" in template else template.format(number(value)))
        else:
            parts.append(f"{key.split('.')[-1].replace('_', ' ')} {number(value)}")
    return ", ".join(parts)


def method_name(loss: str | None, overrides: dict | None = None) -> str:
    """A loss and the setting it ran with: 'Lifted Structure (scale 20)', or 'Lifted
    Structure' at its defaults."""
    setting = setting_text(overrides or {}, loss)
    return f"{loss_name(loss)} ({setting})" if setting else loss_name(loss)


# What a setting study's "default" candidate is, where it is not the loss's paper setting:
# the ranked list loss defaults to its official code's CUB setting (dmlutils.losses.ranked_list),
# and the paper's own CUB setting is one of its candidates.
DEFAULT_NAMES = {"ranked_list": "the official code's setting"}


def default_name(loss: str) -> str:
    """How a sentence names a loss's default setting: "the paper's setting" unless
    `DEFAULT_NAMES` says otherwise."""
    return DEFAULT_NAMES.get(loss, "the paper's setting")


def setting_name(loss: str, overrides: dict) -> str:
    """A setting of `loss` as a reader writes it: 'scale 20', or for no change its default's
    name ("the paper's setting")."""
    return setting_text(overrides, loss) or default_name(loss)
