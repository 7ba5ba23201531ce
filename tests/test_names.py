"""Readers' names for methods and settings (`dmlutils.names`): each distinct, each naming its setting."""
from __future__ import annotations

import re

import pytest

from dmlutils import manifest, names
from dmlutils.losses import LOSSES
from dmlutils.studies import STUDIES, candidate_name, default_name


def test_every_registered_loss_has_a_name_of_its_paper_and_no_registry_key():
    assert set(names.LOSS_NAMES) == set(LOSSES)
    assert len(set(names.LOSS_NAMES.values())) == len(LOSSES)
    for key, name in names.LOSS_NAMES.items():
        assert "_" not in name and name != key and name[0].isupper()


def test_the_issues_examples():
    assert names.method_name("multi_similarity") == "Multi-Similarity"
    assert names.method_name("lifted_structure", {"loss.scale": 20.0}) == "Lifted Structure (scale 20)"
    assert names.method_name("triplet_center", {"loss_lr": 1e-2}) == "Triplet-Center (centre lr 0.01)"
    assert candidate_name("triplet_center", "centre_lr_1e-2") == "Triplet-Center (centre lr 0.01)"
    assert candidate_name("contrastive", "nonzero_mean") == "Contrastive (mean over non-zero pairs)"
    assert candidate_name("lifted_structure", "lr_1e-5") == "Lifted Structure (lr 1e-5)"
    assert candidate_name("ranked_list", "default") == "Ranked List (the official code's setting)"


@pytest.mark.parametrize("value, text", [(20.0, "20"), (0.01, "0.01"), (1e-5, "1e-5"), (2e-4, "0.0002"), (1e12, "1e12"), (64, "64")])
def test_numbers_read_as_a_person_writes_them(value, text):
    assert names.number(value) == text


def _every_name():
    """{name: (what it is, its overrides, its loss)} over the manifest's runs and every study candidate."""
    seen = {}
    for entry in manifest.RUNS:
        seen.setdefault(manifest.label(entry.name), []).append((f"run {entry.name}", entry.overrides, entry.loss))
    for loss, candidates in STUDIES.items():
        for candidate, overrides in candidates.items():
            seen.setdefault(candidate_name(loss, candidate), []).append((f"{loss} candidate {candidate}", overrides, loss))
    return seen


def test_every_name_is_distinct():
    shared = {name: [what for what, _, _ in uses] for name, uses in _every_name().items() if len(uses) > 1}
    assert not shared, f"one name for several runs or settings: {shared}"


def test_every_name_names_each_setting_it_changes_and_no_registry_key():
    keys = set(LOSSES) | {r.name for r in manifest.RUNS} | {c for s in STUDIES.values() for c in s if c != "default"}
    for name, [(what, overrides, loss)] in _every_name().items():
        tokens = set(re.findall(r"[\w.\-]+", name))
        assert not tokens & keys, f"{what}: {name!r} shows a registry key"
        for key, value in overrides.items():
            if key in names.IGNORED:
                continue
            if (key, value) in names.VALUE_TEXT:
                assert names.VALUE_TEXT[key, value] in name, (what, name)
                continue
            if isinstance(value, bool):  # a switch: its label names what is switched ("no positive mining")
                words = key.split(".")[-1].split("_")
                assert any(w.rstrip("s").rstrip("e") in name for w in words), f"{what}: {name!r} does not name {key}"
                continue
            shown = f"{value:,}" if key == "xbm_size" else names.number(value)
            assert shown in name, f"{what}: {name!r} does not show {key} = {value}"
        if not overrides and loss is not None and what.endswith("default"):
            assert default_name(loss) in name


def test_the_words_of_a_setting_say_what_it_is():
    assert names.setting_text({"lr": 5e-5, "head_lr": 1e-4}) == "backbone lr 5e-5, head lr 0.0001"
    assert names.setting_text({"loss_lr": 0.1}, "contrastive") == "loss parameters lr 0.1"
    assert names.setting_text({"p": 8, "k": 10}) == "8 x 10"
    assert names.setting_text({"xbm_size": 1600, "xbm_start": 100}) == "MS + XBM 1,600"
    assert names.setting_text({"loss.some_new_knob": 3}) == "some new knob 3"  # a setting with no words yet still reads


def test_an_unknown_loss_or_candidate_names_the_fix():
    with pytest.raises(ValueError, match="no reader's name for loss 'arcface'.*LOSS_NAMES"):
        names.loss_name("arcface")
    with pytest.raises(ValueError, match="no candidate 'scale_99'.*scale_20"):
        candidate_name("lifted_structure", "scale_99")
