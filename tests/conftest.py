import os
import sys
from pathlib import Path

import pytest
import torch

# One thread: the tests' tensors are tiny, and with two OpenMP threads on a loaded 2-core
# machine every small op pays for thread hand-offs (measured: 100x slower per call).
torch.set_num_threads(1)


@pytest.fixture
def shared_data_root() -> Path:
    """The CUB copy (DML_DATA, else ../shared/data next to the repository); skip if absent."""
    root = Path(os.environ.get("DML_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (root / "CUB_200_2011" / "images.txt").exists():
        message = f"CUB-200-2011 not found under {root} (set DML_DATA)"
        if os.environ.get("CI"):  # CI has the copy: a missing one is a broken setup, not a skip
            pytest.fail(message)
        pytest.skip(message)
    return root


# tests import shared helpers (batches.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))
