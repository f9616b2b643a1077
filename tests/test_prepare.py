"""prepare end to end on the synthetic conversation, held to its ground truth; bad input, one case each."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import dataset
from common.errors import PrepareError
from common.video_io import iter_frames, read_audio, write_video
from data_prep.pipeline import PrepareConfig, sha256_of

ROOT = Path(__file__).resolve().parents[1]
CROP = 128  # conftest.SYNTHETIC_CROP: the size the shared fixture prepares at


def _projected_head_centre(meta_person, track):
    """Frame-pixel position of the head origin: f t_xy / t_z + c, mapped back out of the crop."""
    x0, y0, side = meta_person["bbox"]
    s, f, t = meta_person["crop_size"], meta_person["focal"], track["t"]
    u = f * t[:, 0] / t[:, 2] + s / 2
    v = f * t[:, 1] / t[:, 2] + s / 2
    return x0 + u * side / s, y0 + v * side / s


def test_two_persons_with_stable_boxes_that_hold_the_faces(synthetic):
    meta = dataset.read_meta(synthetic["dataset"])
    truth = synthetic["truth"]
    assert len(meta["persons"]) == 2
    assert meta["n_frames"] == truth["fps"] * 6
    for p in meta["persons"]:
        x0, y0, side = p["bbox"]
        fx, fy = truth["face_center_x"][:, p["id"]], truth["face_center_y"][:, p["id"]]
        assert (fx > x0).all() and (fx < x0 + side).all() and (fy > y0).all() and (fy < y0 + side).all()
        assert p["valid_fraction"] > 0.95
    assert meta["persons"][0]["bbox"][0] < meta["persons"][1]["bbox"][0]  # numbered left to right


def test_roll_and_translation_follow_the_planted_motion(synthetic):
    meta = dataset.read_meta(synthetic["dataset"])
    truth = synthetic["truth"]
    for p in meta["persons"]:
        tr = dataset.load_track(synthetic["dataset"], p["id"])
        roll = np.degrees(tr["euler"][:, 2])
        roll_true = np.degrees(truth["roll"][:, p["id"]])
        assert np.ptp(roll_true) > 5  # the test means something only if the head rolls
        err = (roll - np.median(roll)) - (roll_true - np.median(roll_true))
        assert np.abs(err).max() < 2.0, np.abs(err).max()
        x, y = _projected_head_centre(p, tr)
        tx, ty = truth["face_center_x"][:, p["id"]], truth["face_center_y"][:, p["id"]]
        for est, true in ((x, tx), (y, ty)):
            assert np.ptp(true) > 5
            assert np.abs((est - np.median(est)) - (true - np.median(true))).max() < 3.0


def test_speaking_timeline_agrees_with_the_turns(synthetic):
    af = dataset.load_npz(synthetic["dataset"] / "audio_features.npz")
    agree = (af["speaking"] == synthetic["truth"]["speaking"]).all(1).mean()
    assert agree >= 0.9, agree


def test_dataset_loads_back_with_the_contract_shapes(synthetic):
    root = synthetic["dataset"]
    meta = dataset.read_meta(root)
    T, P = meta["n_frames"], len(meta["persons"])
    af = dataset.load_npz(root / "audio_features.npz")
    assert af["mel"].shape[0] == 80 and abs(af["mel"].shape[1] - T / meta["fps"] * 80) <= 2
    assert af["zcr"].shape == af["rms"].shape == (T,) and af["speaking"].shape == (T, P)
    basis = dataset.load_npz(root / "expression_basis.npz")
    k = basis["exp_basis"].shape[1]
    assert k >= 32 and np.cumsum(basis["explained_variance_ratio"])[k - 1] >= 0.95
    assert len(read_audio(root / "audio.wav")) == pytest.approx(T / meta["fps"] * 16000, abs=2)
    for p in range(P):
        tr = dataset.load_track(root, p)
        assert tr["landmarks"].shape == (T, 478, 3) and tr["R"].shape == (T, 3, 3) and tr["expr"].shape == (T, k)
        np.testing.assert_allclose(np.linalg.det(tr["R"][tr["valid"]]), 1.0, atol=1e-4)
        crops = list(dataset.iter_crops(root, p))
        labels = list(dataset.iter_parsing(root, p))
        assert len(crops) == len(labels) == T and crops[0].shape == (CROP, CROP, 3)
        lab = labels[T // 2]
        assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).mean() > 0.05 and (lab == 2).mean() > 0.05
        # The nose tip lies in the head region, the crop's top corners in the background.
        nose = tr["landmarks"][T // 2, 1, :2].round().astype(int)
        assert lab[nose[1], nose[0]] == 1 and lab[0, 0] == 0
    for name in ("contact_sheet", "pose_curves", "speaking_timeline", "mouth_and_speaking", "expression_spectrum"):
        assert (root / "qa" / f"{name}.png").stat().st_size > 10_000
    assert (root / "background.png").is_file() and not list(root.rglob(".*.tmp*"))


def test_the_person_pass_leaves_the_qa_tiles_and_the_torso_stage_its_working_frames_gone(synthetic):
    from data_prep import person_track

    ds = synthetic["dataset"]
    meta = dataset.read_meta(ds)
    n = meta["n_frames"]
    for p in meta["persons"]:
        assert not any(path.exists() for path in person_track.torso_frames_paths(ds / ".stages", p["id"]))
        tiles = dataset.load_npz(person_track.qa_tiles_path(ds / ".stages", p["id"]))
        assert tiles["frames"].tolist() == np.linspace(0, n - 1, 6).round().astype(int).tolist()
        first = next(dataset.iter_crops(ds, p["id"]))  # the stored crop, through the x264 encoder
        assert np.abs(tiles["crops"][0].astype(int) - first.astype(int)).mean() < 3
        assert (tiles["labels"][0] == next(dataset.iter_parsing(ds, p["id"]))).all()
        assert 0.85 < p["head_cover"] <= 1.0  # above the chin the astronaut is head


def test_one_process_gives_what_the_workers_give(synthetic, tmp_path):
    # The fixture ran in worker processes forked from the fork server, with the voice activity found early in one of
    # them; workers=1 runs every stage here, in order.
    from data_prep.pipeline import prepare

    one = prepare(synthetic["video"], tmp_path / "one", PrepareConfig(crop_size=CROP, workers=1), log=lambda *_: None)
    ds = synthetic["dataset"]
    a, b = dataset.load_npz(ds / "audio_features.npz"), dataset.load_npz(one / "audio_features.npz")
    for key in ("voiced", "vad_prob", "speaking", "mel"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for p in dataset.read_meta(ds)["persons"]:
        pid = p["id"]
        ta, tb = dataset.load_track(ds, pid), dataset.load_track(one, pid)
        np.testing.assert_array_equal(ta["landmarks"], tb["landmarks"])
        np.testing.assert_array_equal(np.stack(list(dataset.iter_parsing(ds, pid))),
                                      np.stack(list(dataset.iter_parsing(one, pid))))
        np.testing.assert_array_equal(dataset.load_npz(ds / "persons" / str(pid) / "torso.npz")["motion"],
                                      dataset.load_npz(one / "persons" / str(pid) / "torso.npz")["motion"])


def test_rerun_skips_finished_stages(synthetic):
    before = (synthetic["dataset"] / "persons" / "0" / "track.npz").stat().st_mtime_ns
    out = run_cli("--video", synthetic["video"], "--out", synthetic["dataset"], "--crop_size", str(CROP))
    assert out.returncode == 0, out.stderr
    assert (synthetic["dataset"] / "persons" / "0" / "track.npz").stat().st_mtime_ns == before


def test_a_redone_stage_redoes_everything_after_it(synthetic, tmp_path):
    # (on a copy: the redone torso stage decodes the stored crops, the person pass's working frames being gone, so the
    # shared dataset's torso motions would change under the tests that compare with them)
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(synthetic["dataset"], root, copy_function=shutil.copy2)
    persons_before = (root / "persons" / "0" / "frames.mp4").stat().st_mtime_ns
    audio_before = (root / "audio_features.npz").stat().st_mtime_ns
    (root / "expression_basis.npz").unlink()
    out = run_cli("--video", synthetic["video"], "--out", root, "--crop_size", str(CROP))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (root / "expression_basis.npz").is_file()
    assert (root / "persons" / "0" / "frames.mp4").stat().st_mtime_ns == persons_before  # upstream kept
    assert (root / "audio_features.npz").stat().st_mtime_ns != audio_before  # downstream redone


def test_the_tracks_stage_fits_a_head_that_an_earlier_version_left_unfitted(synthetic, tmp_path):
    # (the person pass fits each head in its worker; a pass an earlier version left holds the landmarks alone)
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(synthetic["dataset"], root)
    before = dataset.load_track(root, 0)
    kept = ("landmarks", "found", "head_cover")
    for pid in (0, 1):
        stage = root / ".stages" / f"landmarks_{pid}.npz"
        raw = dataset.load_npz(stage)
        assert {"R", "t", "focal", "canonical"} <= set(raw)
        np.savez_compressed(stage, **{k: raw[k] for k in kept})
        (root / "persons" / str(pid) / "track.npz").unlink()
    out = run_cli("--video", synthetic["video"], "--out", root, "--crop_size", str(CROP))
    assert out.returncode == 0, out.stderr[-2000:]
    after = dataset.load_track(root, 0)
    for key in ("R", "t", "euler", "focal", "expr", "landmarks"):
        np.testing.assert_array_equal(after[key], before[key])


def test_prepare_upgrades_a_dataset_of_schema_1_by_running_the_torso_stage(synthetic, tmp_path):
    import shutil

    root = tmp_path / "dataset"
    shutil.copytree(synthetic["dataset"], root)
    meta = json.loads((root / "meta.json").read_text())
    meta["schema_version"] = 1  # as written before the torso stage: no torso.npz
    (root / "meta.json").write_text(json.dumps(meta))
    for p in root.glob("persons/*/torso.npz"):
        p.unlink()
    track_before = (root / "persons" / "0" / "track.npz").stat().st_mtime_ns
    with pytest.raises(PrepareError, match="upgrades it"):
        dataset.read_meta(root)
    out = run_cli("--video", synthetic["video"], "--out", root, "--crop_size", str(CROP))
    assert out.returncode == 0, out.stderr[-2000:]
    assert dataset.read_meta(root)["schema_version"] == dataset.SCHEMA_VERSION
    assert all((root / "persons" / str(p["id"]) / "torso.npz").is_file() for p in meta["persons"])
    assert (root / "persons" / "0" / "track.npz").stat().st_mtime_ns == track_before  # tracking kept


def test_an_interrupt_stops_the_workers_at_once_and_leaves_nothing_half_written(synthetic, tmp_path):
    # As a studio's cancel does: SIGINT to the command alone (its own session), not to its worker processes.
    import os
    import signal
    import time

    out, log = tmp_path / "ds", tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "prepare.py"), "--video", str(synthetic["video"]),
                                 "--out", str(out), "--crop_size", "256"], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while "landmarks+parsing" not in log.read_text(errors="replace") and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # inside the person passes
        proc.send_signal(signal.SIGINT)
        asked = time.time()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    # the person passes stopped where they were (run on to their end, they would have stored the crops)
    assert not list(out.glob("persons/*/frames.mp4")), f"the workers ran on ({time.time() - asked:.1f} s)"
    assert "interrupted; finished stages are kept" in log.read_text(errors="replace")
    assert "Traceback" not in log.read_text(errors="replace")
    assert not list(out.rglob(".*.tmp*")) and not (out / "meta.json").exists()
    # No worker, nor the fork server, is left behind in its process group (the fork server takes a second to end).
    for _ in range(50):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a process of prepare's group outlived it by 5 s")


# -- bad input: one line on stderr, non-zero exit, no traceback, nothing half-written -----------------
def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def assert_refused(proc, out_dir: Path, words: str):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
    assert not (out_dir / "meta.json").exists()
    assert not list(out_dir.rglob(".*.tmp*")) if out_dir.exists() else True


def _clip(path, frames, audio=True, fps=25):
    n = len(frames)
    sound = 0.1 * np.sin(np.linspace(0, 2 * np.pi * 220 * n / fps, int(n / fps * 16000))) if audio else None
    write_video(path, frames, fps, audio=sound)
    return path


def test_missing_file(tmp_path):
    assert_refused(run_cli("--video", tmp_path / "nope.mp4", "--out", tmp_path / "o"), tmp_path / "o", "not found")


def test_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    assert_refused(run_cli("--video", bad, "--out", tmp_path / "o"), tmp_path / "o", "not a video")


def test_several_videos_go_each_into_its_folder_and_one_that_fails_does_not_stop_the_others(synthetic, tmp_path):
    import shutil

    out = tmp_path / "many"
    shutil.copytree(synthetic["dataset"], out / "conversation")  # (finished: its stages are found done, not redone)
    before = (out / "conversation" / "persons" / "0" / "track.npz").stat().st_mtime_ns
    (tmp_path / "notes.mp4").write_text("not a video")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the studio's videos\n{synthetic['video']}\n\nnotes.mp4\n")
    proc = run_cli("--videos", listing, "--out", out, "--jobs", 2, "--crop_size", CROP)  # (a pool of two)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"dataset: {out / 'conversation'}" in proc.stdout
    assert (out / "conversation" / "persons" / "0" / "track.npz").stat().st_mtime_ns == before
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "notes.mp4" in errors[0] and "not a video" in errors[0], proc.stderr[-2000:]
    assert not (out / "notes" / "meta.json").exists()


def test_an_unexpected_failure_of_one_video_is_its_own_and_the_others_go_on(tmp_path, monkeypatch):
    from data_prep import many

    done = []

    def prepare(video, out, cfg, log):
        if video.stem == "b":
            raise MemoryError("out of memory")
        done.append(video.stem)

    monkeypatch.setattr(many, "prepare", prepare)
    videos = [tmp_path / f"{n}.mp4" for n in "abc"]
    outcomes = many.prepare_many(videos, tmp_path / "o", PrepareConfig(), jobs=1, log=lambda *_: None)
    assert done == ["a", "c"] and [o.error for o in outcomes] == [None, "MemoryError: out of memory", None]
    assert [o.out for o in outcomes] == [tmp_path / "o" / n for n in "abc"]
    with pytest.raises(PrepareError, match="--roles says who speaks in one video"):
        many.prepare_many(videos, tmp_path / "o", PrepareConfig(roles="turns.json"))


def test_several_videos_that_would_share_a_folder_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    proc = run_cli("--video", tmp_path / "talk.mp4", "--video", tmp_path / "a" / "talk.mkv", "--out", tmp_path / "o")
    assert_refused(proc, tmp_path / "o", "rename one")
    assert_refused(run_cli("--videos", tmp_path / "none.txt", "--out", tmp_path / "o"), tmp_path / "o", "cannot read")
    assert_refused(run_cli("--out", tmp_path / "o"), tmp_path / "o", "give the video")


def test_no_audio_track_needs_allow_silent(synthetic, tmp_path):
    frames = [f for _, f in zip(range(75), iter_frames(synthetic["video"], 25))]
    silent = _clip(tmp_path / "silent.mp4", frames, audio=False)
    assert_refused(run_cli("--video", silent, "--out", tmp_path / "o"), tmp_path / "o", "--allow_silent")
    ok = run_cli("--video", silent, "--out", tmp_path / "o", "--allow_silent", "--crop_size", "96")
    assert ok.returncode == 0, ok.stderr[-2000:]
    af = dataset.load_npz(tmp_path / "o" / "audio_features.npz")
    assert not af["speaking"].any()


def test_no_face_anywhere(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(60)]
    video = _clip(tmp_path / "noise.mp4", frames)
    assert_refused(run_cli("--video", video, "--out", tmp_path / "o"), tmp_path / "o", "no face")


def test_wrong_number_of_persons(synthetic, tmp_path):
    assert_refused(run_cli("--video", synthetic["video"], "--out", tmp_path / "o", "--persons", "3"),
                   tmp_path / "o", "found 2 person(s)")


def test_face_lost_for_most_of_the_clip(synthetic, tmp_path):
    frames = [f.copy() for _, f in zip(range(100), iter_frames(synthetic["video"], 25))]
    plate = np.asarray(frames[0])[:, :1].repeat(frames[0].shape[1], 1)  # the left edge, a face-free stripe
    for f in frames[40:]:
        f[:] = plate
    video = _clip(tmp_path / "lost.mp4", frames)
    assert_refused(run_cli("--video", video, "--out", tmp_path / "o", "--crop_size", "96"), tmp_path / "o",
                   "lost for most of the clip")


def test_clip_shorter_than_two_seconds(synthetic, tmp_path):
    frames = [f for _, f in zip(range(30), iter_frames(synthetic["video"], 25))]
    video = _clip(tmp_path / "short.mp4", frames)
    assert_refused(run_cli("--video", video, "--out", tmp_path / "o"), tmp_path / "o", "at least 2 s")


def test_unwritable_out(synthetic, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("--video", synthetic["video"], "--out", blocker / "dataset")
    assert_refused(proc, tmp_path / "nothing", "cannot write")


def test_out_holding_another_videos_dataset(synthetic, tmp_path):
    frames = [f for _, f in zip(range(60), iter_frames(synthetic["video"], 25))]
    other = _clip(tmp_path / "other.mp4", frames)
    proc = run_cli("--video", other, "--out", synthetic["dataset"])
    assert proc.returncode != 0 and "another video" in proc.stderr and "Traceback" not in proc.stderr
    # The existing dataset is untouched: still the first video's.
    kept = json.loads((synthetic["dataset"] / "meta.json").read_text())["source"]["sha256"]
    assert kept == sha256_of(synthetic["video"]) != sha256_of(other)


def test_changed_options_start_over_and_same_options_resume(tmp_path):
    from common.atomic_io import save_json
    from data_prep.pipeline import Prepare

    cfg = PrepareConfig(crop_size=256)
    save_json(tmp_path / ".stages" / "source.json", {"source": {}, "config": {**cfg.__dict__}})
    assert not Prepare("v.mp4", tmp_path, PrepareConfig(crop_size=256, workers=1), log=lambda *_: None)._options_changed()
    assert Prepare("v.mp4", tmp_path, PrepareConfig(crop_size=512), log=lambda *_: None)._options_changed()


def test_roles_file_says_who_speaks_and_only_the_audio_stage_reruns(synthetic, tmp_path):
    import shutil

    from data_prep.pipeline import prepare

    root = tmp_path / "dataset"
    shutil.copytree(synthetic["dataset"], root)
    track_before = (root / "persons" / "0" / "track.npz").stat().st_mtime_ns
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps([{"person": 1, "start": 0.0, "end": 100.0}]))  # person 1 speaks all along
    prepare(synthetic["video"], root, PrepareConfig(crop_size=CROP, roles=str(roles)), log=lambda *_: None)
    af = dataset.load_npz(root / "audio_features.npz")
    assert not af["speaking"][:, 0].any()
    np.testing.assert_array_equal(af["speaking"][:, 1], af["voiced"])  # the voiced frames of the interval
    assert str(af["speaking_source"]).startswith("roles ")
    assert (root / "persons" / "0" / "track.npz").stat().st_mtime_ns == track_before  # tracking kept


def test_bad_roles_file_is_refused_before_any_work(synthetic, tmp_path):
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps([{"person": 0, "start": 0.0, "end": 2.0}, {"person": 1, "start": 1.5, "end": 3.0}]))
    out = tmp_path / "out"
    proc = run_cli("--video", synthetic["video"], "--out", out, "--roles", roles)
    assert_refused(proc, out, "overlap")
    assert not out.exists()
