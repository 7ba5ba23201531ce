import os
import sys
from pathlib import Path

import pytest
import torch

# Tests must not depend on how many threads a machine offers (and 2 cores is CI's size).
torch.set_num_threads(min(2, torch.get_num_threads()))


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
