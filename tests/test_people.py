"""Finding people: tiles, duplicate suppression, presence, and every person of real multi-person clips.

The real clips (``../shared/data/dev``) are two split-screen recordings and a three-person panel composed here
from three dev speakers with faces 60-70 px high in a 1280 x 720 frame, one of them turned three-quarters away;
they skip in a user's clone.
"""

import json

import cv2
import numpy as np
import pytest

from common import dataset
from common.errors import PrepareError
from common.video_io import iter_frames, read_audio, write_video
from data_prep import people
from data_prep.people import Detection, PersonTrack

PANEL = (1280, 720)


def test_tiles_cover_the_frame_with_overlap_and_a_small_frame_needs_none():
    w, h = PANEL
    tl = people.tiles(w, h)
    covered = np.zeros((h, w), int)
    for x, y, s in tl:
        assert 0 <= x and x + s <= w and 0 <= y and y + s <= h
        covered[y:y + s, x:x + s] += 1
    assert covered.min() >= 1 and len(tl) == 8
    side = tl[0][2]
    xs = sorted({x for x, _, _ in tl})
    assert all(b - a <= (1 - people.TILE_OVERLAP) * side + 1 for a, b in zip(xs, xs[1:]))
    assert people.tiles(512, 512) == []


def test_duplicates_of_one_face_leave_the_best_and_neighbours_stay():
    whole = Detection(0, 100, 100, 80, 80, 0.7)
    part = Detection(0, 120, 90, 30, 30, 0.9)  # inside the whole face's box, scored higher
    neighbour = Detection(0, 200, 100, 60, 60, 0.6)
    kept = people.suppress_duplicates([whole, part, neighbour])
    assert part in kept and neighbour in kept and whole not in kept


def _track(frames, cx, size=40.0):
    return PersonTrack([Detection(f, cx, 100.0, size, size, 0.9) for f in frames])


def test_a_small_face_seen_only_in_the_tiled_frames_is_a_person_and_a_rare_one_is_dropped_with_its_reason():
    n = 50
    tiled = set(range(0, n, 5))
    big = _track(range(n), 300.0, 120.0)
    small = _track(sorted(tiled), 100.0)  # found only tile by tile: 10 of 50 frames, every tiled one
    blink = _track([3, 4], 500.0)
    persons, dropped = people.select_persons([big, small, blink], n, tiled)
    assert persons == [small, big]  # left to right
    assert [d.track for d in dropped] == [blink] and "4% of the frames" in dropped[0].reason
    # Without the tiled frames' presence the small face would be dropped as a blink.
    persons, _ = people.select_persons([big, small, blink], n)
    assert persons == [big]
    with pytest.raises(PrepareError, match=r"--persons asks for 3; tracks seen too rarely to keep: a face track at "
                                           r"x 500"):
        people.select_persons([big, small, blink], n, tiled, expected=3)


def _panel(dev_dir, path, seconds=7.9):
    """Three dev speakers seated side by side in a 1280 x 720 frame, faces 60-70 px high; the middle one (a debate
    speaker's square crop) is turned three-quarters to the side. Audio: the first speaker's."""
    from skimage import data

    fps = 25
    n = int(seconds * fps)
    w, h = PANEL
    backdrop = cv2.GaussianBlur(cv2.resize(data.coffee(), (w, h)), (0, 0), 12)
    sources = [(dev_dir / "speak_anchor_de_20s_512.mp4", None, 140),
               (dev_dir / "conv_split_debate_8s.avi", (640, 0, 640), 240),
               (dev_dir / "talk_expressive_480.mp4", None, 130)]
    streams = [iter_frames(p, fps, crop=crop) for p, crop, _ in sources]
    xs = [150, 560, 1000]

    def frames():
        for row in zip(*streams):
            canvas = backdrop.copy()
            for f, x, (_, _, side) in zip(row, xs, sources):
                tile = cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)
                canvas[h - 40 - side:h - 40, x:x + side] = tile
            yield canvas

    audio = read_audio(sources[0][0])[: int(seconds * 16000)]
    write_video(path, (f for _, f in zip(range(n), frames())), fps, audio=audio)
    return path


@pytest.mark.slow
def test_the_tiled_search_finds_the_small_faces_the_whole_frame_misses(dev_dir, tmp_path):
    video = _panel(dev_dir, tmp_path / "panel.mp4", seconds=4.0)
    det = people.FaceDetector()
    whole, tiled = [], []
    for i, frame in enumerate(iter_frames(video, 2.0)):
        whole.append(det(frame, i))
        tiled.append(det(frame, i, tiled=True))
    det.close()
    n = len(whole)
    found_whole, _ = people.select_persons(people.link_tracks(whole), n)
    found_tiled, _ = people.select_persons(people.link_tracks(tiled), n, set(range(n)))
    assert len(found_whole) < 3  # what prepare found before the tiled search
    assert len(found_tiled) == 3
    seats = [(150, 290), (560, 800), (1000, 1130)]  # x ranges of the three pictures (see _panel)
    assert all(a < p.median()[0] < b for p, (a, b) in zip(found_tiled, seats))


@pytest.mark.slow
@pytest.mark.parametrize("clip, persons", [("conv_split_interview_17s.mp4", 2), ("conv_split_debate_8s.avi", 2),
                                           ("conv_split_debate_6s.avi", 2), ("panel", 3)])
def test_every_person_of_a_real_multi_person_clip_is_found_and_tracked(dev_dir, tmp_path, clip, persons):
    from data_prep.pipeline import PrepareConfig, prepare

    video = _panel(dev_dir, tmp_path / "panel.mp4") if clip == "panel" else dev_dir / clip
    # Half the frame rate halves the person pass (the suite's time; people are still searched 5 times a second), and one
    # process per test spares the suite the worker processes' start (make test runs two tests at a time).
    out = prepare(video, tmp_path / "ds", PrepareConfig(crop_size=128, fps=12.5, workers=1), log=lambda *_: None)
    meta = dataset.read_meta(out)
    assert len(meta["persons"]) == persons
    for p in meta["persons"]:
        assert p["valid_fraction"] >= 0.95, (p["id"], p["valid_fraction"])
    found = json.loads((out / ".stages" / "people.json").read_text())
    assert all(p["presence"] >= 0.9 for p in found["persons"])
