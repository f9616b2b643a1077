import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEV_DIR = ROOT.parent / "shared" / "data" / "dev"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped on CPU machines)")
    config.addinivalue_line("markers", "slow: end-to-end runs of a whole stage")


@pytest.fixture
def dev_dir():
    """The real single-person dev clips; tests using them skip in a user's clone."""
    if not DEV_DIR.is_dir():
        pytest.skip("../shared/data/dev is absent (only developer and CI machines have it)")
    return DEV_DIR
