"""The experiment matrix behind the ablation chapter: named variations of one MS run.

Each entry is (loss, settings); the record of `<name>` is the run of that loss with those
`--set` overrides on top of a profile. `python -m dmlutils ablation <name> --profile cpu`
runs one; the book shows every record that exists and names the ones that do not.
"""
from __future__ import annotations

MS = "multi_similarity"

# group -> {record name: (loss, overrides)}
ABLATIONS: dict[str, dict[str, tuple[str, dict]]] = {
    "mining and weighting": {
        "multi_similarity": (MS, {}),
        "ms_no_positive_mining": (MS, {"loss.mine_positives": False}),
        "ms_no_negative_mining": (MS, {"loss.mine_negatives": False}),
        "ms_no_mining": (MS, {"loss.mine_positives": False, "loss.mine_negatives": False}),
        "ms_no_weighting": (MS, {"loss.weighting": False}),
        "ms_no_mining_no_weighting": (MS, {"loss.mine_positives": False, "loss.mine_negatives": False, "loss.weighting": False}),
    },
    "beta (negative scale)": {f"ms_beta_{b:g}": (MS, {"loss.beta": float(b)}) for b in (10, 20, 80)},
    "alpha (positive scale)": {f"ms_alpha_{a:g}": (MS, {"loss.alpha": float(a)}) for a in (1, 4)},
    "lambda (threshold)": {f"ms_lam_{v:g}": (MS, {"loss.lam": float(v)}) for v in (0.3, 0.7)},
    "epsilon (mining margin)": {f"ms_epsilon_{v:g}": (MS, {"loss.epsilon": float(v)}) for v in (0.05, 0.2)},
    "embedding size": {f"ms_dim_{d}": (MS, {"embedding_dim": d}) for d in (64, 128)},
    # Not an MS ablation: N-pair on unit vectors has logits in [-2, 2] (chapter 6); a scale
    # stands for the embedding norms of Sohn's unnormalised setting.
    "N-pair logit scale": {f"npair_scale_{s:g}": ("npair", {"loss.scale": float(s)}) for s in (10,)},
    # XBM (Wang et al., CVPR 2020): MS also sees the embeddings of the last 1,600 training
    # samples (20 batches; their features are slightly stale), off in every other run.
    "cross-batch memory": {"ms_xbm_1600": (MS, {"xbm_size": 1600})},
    "batch composition": {
        "ms_batch_8x10": (MS, {"p": 8, "k": 10}),
        "ms_batch_40x2": (MS, {"p": 40, "k": 2}),
    },
}


def all_ablations() -> dict[str, tuple[str, dict]]:
    return {name: spec for group in ABLATIONS.values() for name, spec in group.items()}


def ablation(name: str) -> tuple[str, dict]:
    table = all_ablations()
    if name not in table:
        raise ValueError(f"unknown ablation {name!r}; valid: {', '.join(table)}")
    return table[name]
