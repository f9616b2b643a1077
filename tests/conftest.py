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


# make test's workers share the suite by work stealing: worker k starts on the k-th contiguous share of the
# collected order and, its own queue empty, takes the back half of the longest other queue. A long test that starts
# late is a tail one worker runs alone, so the longest are dealt out first, one to each worker in turn, at the head
# of its share (call seconds on the 2-core box, 2026-12-03; a test not listed keeps its place).
LONGEST_FIRST = [
    "test_train.py::test_one_network_reaches_24_db_on_held_out_frames_of_both_persons",  # 208 s
    "test_studio.py::test_from_a_video_to_a_rendered_conversation_in_a_real_browser",  # 129 s
    "test_distributed.py::test_two_ranks_step_on_their_mean_gradient_and_a_rank_killed_hard_resumes_step_for_step",
    "test_distributed.py::test_a_rank_that_stops_answering_ends_the_job_with_one_line",  # 51 s
    "test_bench.py::test_bench_on_cpu_times_training_and_rendering_and_a_trained_models_step_through_its_occupancy",
    "test_render.py::test_two_ranks_finish_an_interrupted_render_into_the_one_process_video_bit_for_bit",  # 42 s
    "test_kernel_build.py::test_the_fused_kernel_builds_for_sm90_without_a_gpu",  # 39 s
    "test_prepare.py::test_no_audio_track_needs_allow_silent",  # 33 s
    "test_render.py::test_render_from_new_audio_with_posegen_roles_and_two_reactions",  # 32 s
    "test_distributed.py::test_persons_of_several_datasets_share_one_network_each_with_its_own_codes",
    "test_fused_march.py::test_a_models_marched_render_is_the_same_with_the_fused_kernel",
]


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        where = item.nodeid.split("/")[-1]
        return next((i for i, name in enumerate(LONGEST_FIRST) if where.startswith(name)), len(LONGEST_FIRST))

    ranked = sorted(items, key=rank)  # (stable: the rest keep their order)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        items[:] = ranked
        return
    long = [i for i in ranked if rank(i) < len(LONGEST_FIRST)]
    rest = iter(ranked[len(long):])
    dealt, n = [], len(items)
    for k in range(workers):  # (worksteal's first shares: items[k * n // workers:(k + 1) * n // workers])
        head = long[k::workers]
        share = (k + 1) * n // workers - k * n // workers
        dealt += head + [item for _, item in zip(range(share - len(head)), rest)]
    items[:] = dealt + list(rest)


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
