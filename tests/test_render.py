"""render: layouts put each tile where it belongs, replay retargets onto the target's own range,
chunked rendering equals unchunked rendering and resumes, and render.py makes an mp4 with sound."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from render.conversation import Plan, compose, render_chunks, render_frames, speaking_of
from render.drive import Drive, from_track, pose_stats, retarget
from render.layout import ConferenceLayout, OriginalLayout

ROOT = Path(__file__).resolve().parents[1]
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _tiles(side):
    return [np.full((side, side, 3), c, np.uint8) for c in COLORS]


def test_conference_grid_puts_each_tile_in_its_cell_and_frames_the_speaker():
    lay = ConferenceLayout(3, tile=20, gap=4)
    assert (lay.cols, lay.rows) == (2, 2) and lay.size == (52, 52)  # 2 tiles of 20 + 3 gaps of 4
    img = lay.compose(_tiles(32), active=[False, True, False])  # tiles are resized to 20 px
    for i, c in enumerate(COLORS):
        x, y = lay.origin(i)
        assert tuple(img[y + 10, x + 10]) == c, i
    x, y = lay.origin(1)
    assert tuple(img[y - 1, x + 10]) == (255, 196, 0)  # the active speaker's frame
    x, y = lay.origin(0)
    assert tuple(img[y - 1, x + 10]) == (24, 24, 24)  # nobody else's
    assert tuple(img[lay.origin(3)[1] + 10, lay.origin(3)[0] + 10]) == (24, 24, 24)  # the empty fourth cell


def test_original_layout_pastes_tiles_into_their_boxes_over_the_plate():
    plate = np.zeros((60, 120, 3), np.uint8)
    plate[..., 2] = 77
    lay = OriginalLayout(plate, [(0, 10, 50), (60, 5, 40)])
    img = lay.compose(_tiles(16)[:2])
    assert tuple(img[10 + 25, 25]) == COLORS[0] and tuple(img[5 + 20, 60 + 20]) == COLORS[1]
    assert tuple(img[2, 2]) == (0, 0, 77) and tuple(img[55, 110]) == (0, 0, 77)
    assert OriginalLayout(plate, [(0, 10, 50)], scale=0.5).compose(_tiles(16)[:1]).shape == (30, 60, 3)


def test_retargeting_keeps_the_motion_in_the_targets_own_mean_and_range():
    rng = np.random.default_rng(0)
    src = rng.normal([0.1, 0.0, 0.0, 0.0, 0.0, 0.6], [0.05, 0.02, 0.02, 0.01, 0.01, 0.02], (500, 6)).astype(np.float32)
    dst_stats = (np.array([-0.1, 0.05, 0.0, 0.02, -0.01, 0.8]), np.array([0.1, 0.04, 0.01, 0.02, 0.02, 0.03]))
    out = retarget(src, pose_stats(src), dst_stats)
    np.testing.assert_allclose(out.mean(0), dst_stats[0], atol=1e-5)
    np.testing.assert_allclose(out.std(0), dst_stats[1], rtol=1e-4)
    assert np.corrcoef(out[:, 0], src[:, 0])[0, 1] > 0.999  # the same motion, rescaled
    src[3] = np.nan
    np.testing.assert_allclose(retarget(src, pose_stats(src), dst_stats)[3], dst_stats[0], atol=1e-6)


@pytest.fixture(scope="module")
def tiny_run(synthetic, tmp_path_factory):
    """A NeRF trained for a few iterations at 32 px: enough to render, not to look at."""
    from nerf.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("render_run")
    # trained on a copy of the dataset (same name and content), which a test moves away: the avatar renders without it
    copy = tmp_path_factory.mktemp("render_data") / synthetic["dataset"].name
    shutil.copytree(synthetic["dataset"], copy)
    cfg = TrainConfig(data=[str(copy)], out=str(out), iters=3, image_size=32, batch_rays=64,
                      n_coarse=8, n_importance=4, hidden=16, n_levels=4, log2_hashmap_size=10, base_resolution=8,
                      finest_resolution=64, val_every=10**9, ckpt_every=10**9, audio_pretrain_iters=1)
    train(cfg, progress=False)
    return out / "checkpoint.pt"


def test_chunked_rendering_equals_unchunked_and_resumes(synthetic, tiny_run, tmp_path):
    from nerf.evaluate import load_model

    model, persons, _ = load_model(tiny_run, [str(synthetic["dataset"])])
    T = 5
    drives = [from_track(p, np.arange(T)) for p in persons]
    plan = Plan(25.0, np.zeros(int(T / 25 * 16000), np.float32), persons, [drives], persons[0].audio[:T])
    lay = ConferenceLayout(len(persons), tile=32)
    whole = np.stack(list(render_frames(model, plan, lay)))
    paths, rendered, frames = render_chunks(model, plan, tmp_path / "parts", 2, key="k", progress=False)
    assert (rendered, frames) == (3, 5)
    active = speaking_of(plan)
    as_frames = lambda ps: np.stack([compose(lay, t, active[i]) for i, t in  # noqa: E731
                                     enumerate(np.concatenate([np.load(p)["tiles"] for p in ps]))])
    np.testing.assert_array_equal(as_frames(paths), whole)
    paths[1].unlink()  # as if interrupted while writing the second chunk
    again, rendered, frames = render_chunks(model, plan, tmp_path / "parts", 2, key="k", progress=False)
    assert (rendered, frames) == (1, 2)
    np.testing.assert_array_equal(as_frames(again), whole)
    # a different plan never reuses these chunks
    plan2 = Plan(25.0, plan.audio, persons, [[Drive(d.euler + 0.01, d.t, d.expr, d.speaking) for d in drives]],
                 plan.codes)
    _, rendered, _ = render_chunks(model, plan2, tmp_path / "parts", 2, key="other", progress=False)
    assert rendered == 3


def _render_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "render.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_render_command_replays_the_video_into_an_mp4_with_audio(synthetic, tiny_run, tmp_path):
    from common.video_io import probe

    out = tmp_path / "recon.mp4"
    # The tiles first (as on a GPU machine without ffmpeg), from a copy of the checkpoint elsewhere...
    elsewhere = tmp_path / "gpu" / "checkpoint.pt"
    elsewhere.parent.mkdir()
    shutil.copy(tiny_run, elsewhere)
    common = ["--data", synthetic["dataset"], "--pose_from", "tracked", "--max_seconds", 0.4, "--chunk", 4,
              "--out", out, "--conference_out", tmp_path / "grid.mp4"]
    assert _script("render").main([str(a) for a in ["--ckpt", elsewhere, *common, "--tiles_only"]]) == 0
    assert len(list((tmp_path / "recon.mp4.parts").glob("chunk_*.npz"))) == 3 and not out.exists()
    # ...then the videos from the same checkpoint content: every chunk is reused
    proc = _render_cli("--ckpt", tiny_run, *common)
    assert proc.returncode == 0, proc.stderr
    assert "(3 chunks reused)" in proc.stdout, proc.stdout
    info = probe(out)
    assert round(info.duration * info.fps) == 10 and info.has_audio and (info.width, info.height) == (640, 360)
    grid = probe(tmp_path / "grid.mp4")  # the same frames in a 2-column grid of 32 px tiles, 4 px gaps
    assert (grid.width, grid.height) == (76, 40) and round(grid.duration * grid.fps) == 10
    assert not (tmp_path / "recon.mp4.parts").exists()


def _script(name):
    """A script's module, run in this process (its main() is what the command line runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # two one-process renders and a torchrun render of two ranks (30 s)
def test_two_ranks_finish_an_interrupted_render_into_the_one_process_video_bit_for_bit(synthetic, tiny_run, tmp_path):
    import os

    args = ["--ckpt", tiny_run, "--data", synthetic["dataset"], "--pose_from", "tracked", "--max_seconds", "0.8",
            "--chunk", "4"]  # 20 frames in 5 chunks
    one = _render_cli(*args, "--out", tmp_path / "one.mp4", "--threads", "1")
    assert one.returncode == 0, one.stderr[-2000:]
    # an interrupted render: two of its five chunks are there; the two ranks share the three missing ones out
    tiles = _render_cli(*args, "--out", tmp_path / "two.mp4", "--threads", "1", "--tiles_only")
    assert tiles.returncode == 0, tiles.stderr[-2000:]
    for start in (0, 4, 8):
        (tmp_path / "two.mp4.parts" / f"chunk_{start:07d}.npz").unlink()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "scripts" / "render.py"), *map(str, args), "--out", str(tmp_path / "two.mp4")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    last = two.stdout.strip().splitlines()
    assert len(last) == 1 and last[0].endswith("(2 chunks reused) on 2 ranks"), two.stdout  # rank 0 alone reports
    assert (tmp_path / "one.mp4").read_bytes() == (tmp_path / "two.mp4").read_bytes()
    assert not (tmp_path / "two.mp4.parts").exists()


def test_render_bad_inputs_exit_with_one_line(synthetic, tiny_run, tmp_path, capsys):
    main = _script("render").main
    base = ["--ckpt", tiny_run, "--data", synthetic["dataset"]]
    cases = [
        [*base, "--pose_from", "tracked", "--persons", "7", "--out", tmp_path / "a.mp4"],
        [*base, "--audio", synthetic["video"], "--out", tmp_path / "b.mp4"],  # no posegen, no pose_from
        [*base, "--pose_from", "tracked", "--out", tmp_path / "c.avi"],
        [*base, "--pose_from", "tracked", "--out", "/proc/nope/d.mp4"],
        [*base, "--pose_from", "tracked", "--ray_samples", "24x16", "--out", tmp_path / "e.mp4"],
        [*base, "--pose_from", "tracked", "--march_steps", 16, "--no_occupancy", "--out", tmp_path / "f.mp4"],
    ]
    for args in cases:
        assert main([str(a) for a in args]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob("*.parts"))
    # the render-path options themselves: marching, and fewer samples per field
    for extra in (["--march_steps", 16], ["--ray_samples", "4+2"]):
        args = [*base, "--pose_from", "tracked", "--max_seconds", 0.08, "--tiles_only", "--out", tmp_path / "g.mp4", *extra]
        assert main([str(a) for a in args]) == 0
        assert len(list((tmp_path / "g.mp4.parts").glob("chunk_*.npz"))) == 1
        shutil.rmtree(tmp_path / "g.mp4.parts")


def test_driven_person_renders_frames_it_never_recorded(synthetic, tiny_run):
    """A person driven by its own tracked signals renders what the recorded person renders (its torso's motion then
    predicted from the head pose, as in any driven frame), and frames past the recording's end too."""
    import dataclasses

    from nerf.evaluate import load_model
    from nerf.render import render_frame
    from render.drive import driven_person

    model, persons, _ = load_model(tiny_run, [str(synthetic["dataset"])])
    p = persons[0]
    n = len(p.euler)
    T = n + 3  # longer than the recording
    q = driven_person(p, from_track(p, np.arange(T) % n), p.audio[np.arange(T) % n])
    assert len(q.images) == 0 and q.torso_motion is None
    recorded = dataclasses.replace(p, torso_motion=None)
    for f in (2, n // 2):  # (frames whose audio windows lie inside the recording in both)
        torch.testing.assert_close(render_frame(model, q, f)["rgb"], render_frame(model, recorded, f)["rgb"],
                                   atol=1e-5, rtol=0)
    past = render_frame(model, q, n + 2)["rgb"]  # past the end: the loop's frame 2 again, its own audio window
    assert past.shape == (32, 32, 3) and 0 <= past.min() and past.max() <= 1


def test_a_posegen_checkpoint_of_other_data_is_refused(synthetic, tiny_run):
    from nerf.avatar import datasets_of, persons_of
    from nerf.trainer import load_checkpoint
    from render.conversation import RenderError, check_posegen_matches

    avatar = load_checkpoint(tiny_run)["avatar"]
    persons, infos = persons_of(avatar), datasets_of(avatar)
    name = synthetic["dataset"].name
    assert [i.name for i in infos] == [name] and infos[0].sha256
    good = {"datasets": [{"name": name, "sha256": ""}], "persons": [p.name for p in persons]}
    check_posegen_matches(good, persons, infos)
    for bad in ({**good, "datasets": [{"name": "other", "sha256": ""}]},
                {**good, "datasets": [{"name": name, "sha256": "f" * 64}]},
                {**good, "persons": [persons[0].name]}):
        with pytest.raises(RenderError):
            check_posegen_matches(bad, persons, infos)


def test_render_from_new_audio_with_posegen_roles_and_two_reactions(synthetic, tiny_run, tmp_path):
    import json

    from common.video_io import probe

    pg = tmp_path / "pg"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_posegen.py"), "--data", str(synthetic["dataset"]),
                           "--out", str(pg), "--epochs", "2", "--channels", "16", "--window_s", "2.0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    roles = tmp_path / "roles.json"
    # (the third turn lies past --max_seconds: the roles file names the whole audio, the render cuts it)
    roles.write_text(json.dumps([{"person": 0, "start": 0.0, "end": 0.2}, {"person": 1, "start": 0.2, "end": 0.4},
                                 {"person": 0, "start": 0.6, "end": 0.9}]))
    trained_on = Path(json.loads((tiny_run.parent / "config.json").read_text())["data"][0])
    away = trained_on.with_name("moved_away")
    trained_on.rename(away)  # the avatar's dataset is gone: the checkpoint alone renders
    try:
        out = tmp_path / "conf.mp4"
        proc = _render_cli("--ckpt", tiny_run, "--posegen", pg / "checkpoint.pt", "--audio", synthetic["video"],
                           "--roles", roles, "--layout", "conference", "--samples", 2, "--max_seconds", 0.4,
                           "--out", out)
        assert proc.returncode == 0, proc.stderr
        info = probe(out)
        # two persons in a 2-column grid of 32 px tiles with 4 px gaps (76 x 40), two reactions side by side
        assert (info.width, info.height) == (152, 40) and info.has_audio and round(info.duration * info.fps) == 10
        # who speaks from the voices the checkpoint enrolled; the original layout over its plate, and the grid
        proc = _render_cli("--ckpt", tiny_run, "--posegen", pg / "checkpoint.pt", "--audio", synthetic["video"],
                           "--max_seconds", 0.4, "--out", tmp_path / "orig.mp4", "--conference_out", tmp_path / "g.mp4")
        assert proc.returncode == 0, proc.stderr
        original, grid = probe(tmp_path / "orig.mp4"), probe(tmp_path / "g.mp4")
        frame_size = json.loads((synthetic["dataset"] / "meta.json").read_text())["frame_size"]
        assert [original.width, original.height] == frame_size and original.has_audio
        assert (grid.width, grid.height) == (76, 40) and grid.has_audio and round(grid.duration * grid.fps) == 10
    finally:
        away.rename(trained_on)
