import os
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test's workers share the cores: one thread each, for torch here and in the commands the tests start (two
    # processes of two spinning threads on two cores took twice the CPU time)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEV_DIR = ROOT.parent / "shared" / "data" / "dev"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped on CPU machines)")
    config.addinivalue_line("markers", "slow: long end-to-end runs (benchmarks, compilers): `pytest -m \"not slow\"` skips "
                            "them for a quick loop; `make test` runs them")


SYNTHETIC_CROP = 128


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A 6 s synthetic two-person conversation and its prepared dataset (shared by every test module)."""
    import numpy as np

    from data_prep.pipeline import PrepareConfig, prepare
    from data_prep.synthetic import make_conversation

    root = tmp_path_factory.mktemp("synthetic")
    made = make_conversation(root / "video", seconds=6.0)
    video = root / "video" / "conversation.mp4"
    out = prepare(video, root / "dataset", PrepareConfig(crop_size=SYNTHETIC_CROP), log=lambda *_: None)
    return {"video": video, "dataset": out, "truth": np.load(root / "video" / "truth.npz"), "made": made}


@pytest.fixture
def dev_dir():
    """The real single-person dev clips; tests using them skip in a user's clone."""
    if not DEV_DIR.is_dir():
        pytest.skip("../shared/data/dev is absent (only developer and CI machines have it)")
    return DEV_DIR
