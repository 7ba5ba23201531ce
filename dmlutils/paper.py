"""Published numbers, to be shown beside ours and labelled as the paper's.

Source: the official repository's README (msight-tech/research-ms-loss) and the papers,
as collected in REFERENCES.md. Recall@K in percent on the CUB-200-2011 test classes.
None of these numbers is produced here.
"""

PUBLISHED_CUB_RECALL = {
    # name: (embedding size, {K: Recall@K %}, source)
    "Multi-Similarity (paper)": (512, {1: 65.7, 2: 77.0, 4: 86.3, 8: 91.2, 16: 95.0, 32: 97.3}, "Wang et al. 2019, official README"),
    "Multi-Similarity, 64-d (paper)": (64, {1: 57.4, 2: 69.8, 4: 80.0, 8: 87.8, 16: 93.2, 32: 96.4}, "Wang et al. 2019, official README"),
    "Clustering (as cited by MS)": (64, {1: 48.2, 2: 61.4, 4: 71.8, 8: 81.9}, "MS official README"),
    "ProxyNCA (as cited by MS)": (64, {1: 49.2, 2: 61.9, 4: 67.9, 8: 72.4}, "MS official README"),
    "Smart Mining (as cited by MS)": (64, {1: 49.8, 2: 62.3, 4: 74.1, 8: 83.3}, "MS official README"),
    "HTL (as cited by MS)": (512, {1: 57.1, 2: 68.8, 4: 78.7, 8: 86.5, 16: 92.5, 32: 95.5}, "MS official README"),
    "ABIER (as cited by MS)": (512, {1: 57.5, 2: 68.7, 4: 78.3, 8: 86.2, 16: 91.9, 32: 95.5}, "MS official README"),
    "RLL-H (paper)": (512, {1: 57.4, 2: 69.7, 4: 79.2, 8: 86.9}, "Wang et al. 2019b (Ranked List Loss)"),
    "RLL-(L,M,H) (paper)": (512, {1: 61.3, 2: 72.7, 4: 82.7, 8: 89.4}, "Wang et al. 2019b (Ranked List Loss)"),
}

# Musgrave, Belongie, Lim (ECCV 2020), CUB, concatenated 512-d: P@1, R-precision, MAP@R (%),
# from secondary copies of the paper's table (REFERENCES.md).
REALITY_CHECK_CUB = {
    "Contrastive": (68.13, 37.24, 26.53),
    "Triplet": (64.24, 34.55, 23.69),
    "NT-Xent": (66.61, 35.96, 25.09),
    "MS": (65.04, 35.40, 24.70),
    "MS + miner": (67.73, 37.37, 26.52),
    "Margin": (63.60, 33.94, 23.09),
}
