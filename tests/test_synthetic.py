"""The synthetic conversation is what it claims: detectors see the planted truth in the video and audio."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import PrepareError
from common.video_io import AUDIO_SR, iter_frames, probe, read_audio
from data_prep.synthetic import make_conversation, plan_turns

CLIP = dict(seconds=6.0, fps=25, width=568, height=320, seed=3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The generated clip: paths, truth arrays and decoded frames [T, H, W, 3]."""
    result = make_conversation(tmp_path_factory.mktemp("synthetic"), **CLIP)
    result["frames"] = np.stack(list(iter_frames(result["video"], CLIP["fps"])))
    return result


@pytest.fixture(scope="module")
def mesh(clip):
    """Face-mesh landmarks [T, 2, 478, 2] in frame pixels, each person tracked in its half of the frame."""
    import mediapipe as mp

    frames = clip["frames"]
    t, h, w = frames.shape[:3]
    out = np.full((t, 2, 478, 2), np.nan)
    for p in range(2):
        x0 = p * w // 2
        with mp.solutions.face_mesh.FaceMesh(max_num_faces=1, refine_landmarks=True) as face_mesh:
            for i in range(t):
                half = np.ascontiguousarray(frames[i, :, x0:x0 + w // 2])
                res = face_mesh.process(half)
                if res.multi_face_landmarks:
                    lm = res.multi_face_landmarks[0].landmark
                    out[i, p] = [[q.x * (w // 2) + x0, q.y * h] for q in lm]
    return out


def _md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(clip, tmp_path):
    again = make_conversation(tmp_path / "again", **CLIP)
    for key in ("video", "truth_npz", "truth_json"):
        assert _md5(again[key]) == _md5(clip[key]), key
    other = [(p, round(s, 3)) for p, s, _ in plan_turns(6.0, np.random.default_rng(CLIP["seed"] + 1))]
    assert other != [(p, round(s, 3)) for p, s, _ in clip["truth"]["turns"]]


def test_truth_shapes_ranges_and_turns(clip):
    truth = clip["truth"]
    t = int(truth["n_frames"])
    assert t == CLIP["seconds"] * CLIP["fps"]
    for key in ("roll", "scale", "tx", "ty", "face_center_x", "face_center_y", "mouth", "blink", "speaking"):
        assert truth[key].shape == (t, 2), key
    assert truth["affine"].shape == (t, 2, 2, 3)
    assert truth["rest_face_box"].shape == (2, 4) and truth["rest_landmarks"].shape == (2, 478, 2)
    assert np.abs(truth["roll"]).max() <= np.deg2rad(8) and np.abs(truth["roll"]).max() > np.deg2rad(2)
    assert np.abs(truth["scale"] - 1).max() <= 0.05 + 1e-6
    assert np.abs(truth["tx"]).max() <= 8 * CLIP["height"] / 360 + 1e-4
    face_h = truth["rest_face_box"][:, 3] - truth["rest_face_box"][:, 1]
    assert np.all((face_h > 0.25 * CLIP["height"]) & (face_h < 0.36 * CLIP["height"]))
    turns = truth["turns"]
    assert len(turns) >= 3 and list(turns[:3, 0]) == [0, 1, 0]
    pauses = turns[1:, 1] - turns[:-1, 2]
    assert np.all((pauses >= 0.5) & (pauses <= 1.0))
    assert not np.any(truth["speaking"].all(1)), "both people talk at once"
    assert np.all(truth["mouth"][~truth["speaking"]] == 0) and truth["mouth"].max() > 0.8
    for p in range(2):
        assert truth["speaking"][:, p].any() and (truth["blink"][:, p] > 0.99).any()


def test_video_probes_with_size_fps_and_audio(clip):
    info = probe(clip["video"])
    assert (info.width, info.height, info.fps) == (CLIP["width"], CLIP["height"], CLIP["fps"])
    assert info.has_audio and abs(info.duration - CLIP["seconds"]) < 0.1
    assert clip["frames"].shape[0] == clip["truth"]["n_frames"]
    audio = read_audio(clip["video"])
    assert abs(audio.size / AUDIO_SR - CLIP["seconds"]) < 0.1 and np.abs(audio).max() > 0.3


def test_face_detection_finds_both_people_where_planted(clip):
    import mediapipe as mp

    truth = clip["truth"]
    with mp.solutions.face_detection.FaceDetection(model_selection=1) as detector:
        for i in np.linspace(0, int(truth["n_frames"]) - 1, 5).astype(int):
            found = detector.process(clip["frames"][i]).detections or []
            assert len(found) == 2, f"frame {i}: {len(found)} faces"
            boxes = [d.location_data.relative_bounding_box for d in found]
            centers = sorted([((b.xmin + b.width / 2) * CLIP["width"], (b.ymin + b.height / 2) * CLIP["height"])
                              for b in boxes])
            for p, (x, y) in enumerate(centers):
                # the detector's box sits a few pixels above the landmark box (brows to chin)
                assert abs(x - truth["face_center_x"][i, p]) < 6 and abs(y - truth["face_center_y"][i, p]) < 10


def test_lip_gap_follows_planted_mouth(clip, mesh):
    assert not np.isnan(mesh).any(), "face mesh lost a face"
    gap = np.linalg.norm(mesh[:, :, 13] - mesh[:, :, 14], axis=-1) / clip["truth"]["scale"]
    for p in range(2):
        r = np.corrcoef(gap[:, p], clip["truth"]["mouth"][:, p])[0, 1]
        assert r > 0.7, f"person {p}: lip gap vs planted mouth r={r:.2f}"


def test_planted_blink_closes_the_eyelids(clip, mesh):
    lids = (np.linalg.norm(mesh[:, :, 159] - mesh[:, :, 145], axis=-1)
            + np.linalg.norm(mesh[:, :, 386] - mesh[:, :, 374], axis=-1)) / 2
    blink = clip["truth"]["blink"]
    for p in range(2):
        open_, shut = np.median(lids[blink[:, p] == 0, p]), lids[blink[:, p] > 0.99, p]
        assert shut.max() < 0.5 * open_, f"person {p}: eyelids {shut} vs {open_:.1f} px open"


def test_roll_sign_matches_the_eye_line(clip, mesh):
    # eye corners sorted left to right on screen, so the mirrored person reads the same way
    a, b = mesh[:, :, 33], mesh[:, :, 263]
    left, right = np.where(a[..., :1] < b[..., :1], a, b), np.where(a[..., :1] < b[..., :1], b, a)
    measured = np.arctan2(right[..., 1] - left[..., 1], right[..., 0] - left[..., 0])
    err = np.rad2deg(np.abs(measured - clip["truth"]["roll"]))
    assert err.mean() < 1.5, f"eye-line roll is off the planted roll by {err.mean():.2f} deg on average"


def test_silero_vad_agrees_with_planted_speaking(clip):
    import torch

    from speech.speaking import _silero  # (imports silero_vad keeping torch's thread count: see speech.speaking)

    _silero()
    from silero_vad import get_speech_timestamps, load_silero_vad

    audio = read_audio(clip["video"])
    segments = get_speech_timestamps(torch.from_numpy(audio), load_silero_vad(), sampling_rate=AUDIO_SR)
    t = np.arange(int(clip["truth"]["n_frames"])) / CLIP["fps"]
    heard = np.zeros(t.size, bool)
    for seg in segments:
        heard |= (t >= seg["start"] / AUDIO_SR) & (t < seg["end"] / AUDIO_SR)
    agree = (heard == clip["truth"]["speaking"].any(1)).mean()
    assert agree >= 0.9, f"silero-vad agrees on {agree:.1%} of frames"


def test_impossible_requests_are_refused(tmp_path):
    with pytest.raises(PrepareError, match="too narrow"):
        make_conversation(tmp_path, width=400, height=360)
    with pytest.raises(PrepareError, match="at least 6 s"):
        make_conversation(tmp_path, seconds=3.0)


def test_cli_prints_one_line_errors_and_teaches_in_help(tmp_path, capsys):
    from scripts.make_synthetic import main

    assert main(["--out", str(tmp_path), "--height", "361"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "even" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "conversation.mp4" in capsys.readouterr().out
