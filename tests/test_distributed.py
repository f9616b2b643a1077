"""Training under torchrun on the CPU (gloo): two ranks train one network as one process does, a rank killed hard
stops the job and the run resumes step for step, a rank that hangs ends the job with one line; and several datasets
in one network."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common.errors import PrepareError
from nerf import trainer
from nerf.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# Run by torchrun in each rank: scripts/train.py's main, where rank KILL_RANK kills itself hard (SIGKILL) during
# step KILL_STEP and every rank can be made to report its pid.
_RANK = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from nerf import trainer
from scripts.train import main
rank = int(os.environ["RANK"])
kill_at = int(os.environ.get("KILL_STEP", "0"))
steps = [0]
real = trainer.losses
def losses(*args):
    steps[0] += 1
    if rank == int(os.environ.get("KILL_RANK", "1")) and steps[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
trainer.losses = losses
if os.environ.get("PID_DIR"):
    open(os.path.join(os.environ["PID_DIR"], f"rank{rank}"), "w").write(str(os.getpid()))
sys.exit(main(sys.argv[2:]))
"""


def _small(data: list[Path], out: Path, iters: int, *extra) -> list[str]:
    """scripts/train.py's options of a small run (the tiny size, smaller still), sampling through an occupancy grid
    from step 4 (rank 0's, sent to the others)."""
    args = ["--size", "tiny", "--image_size", "32", "--batch_rays", "64", "--iters", str(iters), "--out", str(out),
            "--audio_pretrain_iters", "0", "--val_every", str(10**6), "--log_every", "2", "--occupancy_every", "4"]
    for d in data:
        args += ["--data", str(d)]
    return args + [str(a) for a in extra]


def _torchrun(tmp_path: Path, n: int, args: list[str], wait: bool = True, launcher: tuple = (), **env):
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *launcher,
           str(script), str(ROOT), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    if not wait:
        err = open(tmp_path / "stderr.txt", "w")
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=full_env)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def _state(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow  # three torchrun jobs of two ranks (60 s)
def test_two_ranks_step_on_their_mean_gradient_and_a_rank_killed_hard_resumes_step_for_step(synthetic, tmp_path):
    data = [synthetic["dataset"]]
    straight = _torchrun(tmp_path, 2, _small(data, tmp_path / "a", 8, "--ckpt_every", 4))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert straight.stdout.count("held-out PSNR") == 1  # rank 0 alone reports
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rays_per_step"] == 128
    losses = summary["loss_history"]
    assert len(losses) == 8 and losses[-1] < losses[0]
    a = _state(tmp_path / "a")
    assert a["world_size"] == 2 and len(a["rank_generators"]) == 2
    assert torch.equal(a["rank_generators"][0]["rays"], a["generators"]["rays"])

    # rank 1 killed hard during step 2: the job stops (no hang); the checkpoint of step 1 is kept. torchrun's agent
    # looks at its workers every 10 s here, as though rank 1 were on another node: with its default 0.1 s it may
    # stop rank 0 (SIGTERM) before rank 0 notices the loss itself, and its own report then names rank 1
    t0 = time.time()
    killed = _torchrun(tmp_path, 2, _small(data, tmp_path / "b", 8, "--ckpt_every", 1, "--dist_timeout_s", 60),
                       launcher=("--monitor-interval", "10"), KILL_STEP=2)
    assert killed.returncode != 0 and time.time() - t0 < 300
    # rank 0 says so in one line: its peer is gone ("Connection reset by peer", at once, not after the timeout)
    assert "error: rank 0 of 2: another rank stopped answering" in killed.stderr, killed.stderr[-3000:]
    after_one = _state(tmp_path / "b")
    assert after_one["iteration"] == 1
    _assert_the_step_of_the_mean_gradient(after_one["model"], synthetic["dataset"])

    resumed = _torchrun(tmp_path, 2, _small(data, tmp_path / "b", 8, "--ckpt_every", 4, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    b = _state(tmp_path / "b")
    for key in ("model", "audio_encoder"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for i, sa in a["optimizer"]["state"].items():
        for name, v in sa.items():
            assert torch.equal(v, b["optimizer"]["state"][i][name]), f"optimizer state {i}.{name} differs"
    for ga, gb in zip(a["rank_generators"], b["rank_generators"]):
        assert all(torch.equal(ga[k], gb[k]) for k in ga)
    assert all(torch.equal(a["occupancy"][k], b["occupancy"][k]) for k in ("head", "torso"))  # (built at step 4)


def _assert_the_step_of_the_mean_gradient(ddp: dict, data: Path) -> None:
    """DistributedDataParallel averages the ranks' gradients, and rank r draws its rays from seed + r * RANK_SEED:
    the first step of two ranks is the one-process step on the mean of the two batches' gradients, not the step of
    rank 0's batch alone. (Adam's first step moves every weight by the learning rate times the sign of its gradient,
    so the two are told apart wherever the batches disagree; float sums may flip a sign where they all but
    cancel.)"""
    from nerf.audio import load_audio_encoder
    from nerf.data import load_datasets, sample_rays

    cfg = trainer.sized("tiny", data=[str(data)], image_size=32, batch_rays=64, iters=8, audio_pretrain_iters=0)
    persons = load_datasets(cfg.data, cfg.image_size, load_audio_encoder(trainer.SHIPPED_ENCODER))

    def one_step(ranks: list[int]) -> dict:
        model, opt = trainer.build(cfg, persons)
        params = list(model.parameters())
        total = [torch.zeros_like(p) for p in params]
        for r in ranks:
            gens = trainer._generators(cfg, torch.device("cpu"), r)
            batch = sample_rays(persons, cfg.batch_rays, gens["rays"], cfg.audio_window)
            loss = trainer.losses(model(batch, jitter=True, gen=gens["jitter"]), batch, model, cfg)["total"]
            for t, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
                t += 0 if g is None else g / len(ranks)
        for p, t in zip(params, total):
            p.grad = t
        opt.step()
        return model.state_dict()

    def agreement(state: dict) -> float:
        keys = [k for k in ddp if ddp[k].is_floating_point()]
        same = sum(int(torch.isclose(state[k], ddp[k], rtol=0, atol=1e-6).sum()) for k in keys)
        return same / sum(ddp[k].numel() for k in keys)

    assert agreement(one_step([0, 1])) > 0.999  # (1.0 measured)
    assert agreement(one_step([0])) < 0.9  # (0.83: the weights whose gradient is 0 in both agree)


# (20 s: the timeout also bounds rank 1's wait while rank 0 alone enrolls the voices, on a busy CI machine)
@pytest.mark.slow  # a torchrun job of two ranks and a 20 s timeout (45 s)
def test_a_rank_that_stops_answering_ends_the_job_with_one_line(synthetic, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = _torchrun(tmp_path, 2, _small([synthetic["dataset"]], tmp_path / "run", 10**6, "--ckpt_every", 5,
                                         "--dist_timeout_s", 20), wait=False, PID_DIR=pids)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "run" / "checkpoint.pt").is_file():  # training is under way
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.5)
        rank1 = int((pids / "rank1").read_text())
        os.kill(rank1, signal.SIGSTOP)  # alive, but answers nothing
        stopped = time.time()
        while "stopped answering" not in (tmp_path / "stderr.txt").read_text():
            assert time.time() - stopped < 120, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.5)
        os.kill(rank1, signal.SIGCONT)  # (so that torchrun can end it at once)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "stderr.txt").read_text()
    line = next(s for s in err.splitlines() if "stopped answering" in s)
    assert line.startswith("error: rank 0 of 2: another rank stopped answering") and "20 s timeout" in line


def test_persons_of_several_datasets_share_one_network_each_with_its_own_codes(synthetic, tmp_path):
    from nerf.evaluate import load_model
    from nerf.render import render_frame

    other = tmp_path / "other"
    shutil.copytree(synthetic["dataset"], other)
    cfg = TrainConfig(data=[str(synthetic["dataset"]), str(other)], out=str(tmp_path / "run"), iters=3,
                      **{**trainer.SIZES["tiny"], "image_size": 32, "batch_rays": 64, "audio_pretrain_iters": 0,
                         "val_every": 10**6, "ckpt_every": 10**6})
    trainer.train(cfg, progress=False)
    ckpt = _state(tmp_path / "run")
    first = synthetic["dataset"].name
    assert ckpt["persons"] == [f"{first}:0", f"{first}:1", "other:0", "other:1"]
    codes = ckpt["model"]["z_shape.weight"]
    assert codes.shape[0] == 4 and len(torch.unique(codes, dim=0)) == 4
    # every person renders from the checkpoint alone, each with its own code: the copies' persons differ from the
    # originals only by their codes, and so do their pictures
    model, persons, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    frames = [render_frame(model, p, 0)["rgb"] for p in persons]
    assert all(torch.isfinite(f).all() for f in frames)
    assert not torch.equal(frames[0], frames[2]) and not torch.equal(frames[1], frames[3])


def test_two_datasets_of_one_folder_name_or_one_dataset_twice_are_refused(synthetic, tmp_path):
    from nerf.audio import load_audio_encoder
    from nerf.data import load_datasets

    twin = tmp_path / "elsewhere" / synthetic["dataset"].name
    shutil.copytree(synthetic["dataset"], twin)
    encoder = load_audio_encoder(trainer.SHIPPED_ENCODER)
    with pytest.raises(PrepareError, match="two datasets are named .*rename one"):
        load_datasets([synthetic["dataset"], twin], 32, encoder)
    with pytest.raises(PrepareError, match="is given twice"):
        load_datasets([synthetic["dataset"], synthetic["dataset"]], 32, encoder)
