"""prepare: a conversation video becomes the dataset directory of ``common.dataset``.

Stages run in order; each writes its outputs atomically and is skipped on a
re-run when they exist (``force`` redoes everything). ``meta.json`` is
written last, so its presence means the dataset is complete. Stage results
that only later stages need live in ``<out>/.stages/``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import dataset, video_io
from common.atomic_io import save_image, save_json, save_npz, sha256_of
from common.errors import PrepareError
from common.memory import tune_process
from data_prep import expression, people, person_track, qa, torso_track
from data_prep import workers as workers_
from data_prep.audio_features import audio_features
from data_prep.parsing import PersonSegmenter, median_plate
from speech import speaking
from speech.roles import read_roles

MIN_SECONDS = 2.0
MAX_ROLE_PERSONS = 64  # a roles file is checked up front against this many persons, then against those found
QA_FRAMES = 6  # frames per person on the contact sheet
FRAME_PLATE_SAMPLES = 32  # frames whose median is the full-frame background plate
MAX_DROPPED_SHOWN = 6  # dropped face tracks named in the log, most seen first; the rest are counted


@dataclasses.dataclass
class PrepareConfig:
    """Options of prepare (scripts/prepare.py exposes each as a flag)."""

    fps: float = 25.0
    """Target frame rate; frames and audio are resampled to it together."""
    crop_size: int = 512
    """Side of every person crop in pixels."""
    persons: int | None = None
    """Insist on this many people (None: as many as are found)."""
    expression_k: int = 32
    """Expression PCA components (raised if fewer keep 95% of the variance)."""
    smooth_pose: float = 1.0
    """Gaussian sigma in frames for temporal pose smoothing (0: off)."""
    detect_per_second: float = 5.0
    """Face-detection frames per second when finding people."""
    allow_silent: bool = False
    """Accept a video without an audio track (silence; nobody speaks)."""
    workers: int = 0
    """Processes for the per-person passes and torso tracking (0: one per CPU core; 1: everything in this one)."""
    force: bool = False
    """Redo every stage, and overwrite another video's dataset."""
    crf: int = 17
    """x264 quality of the stored crops (lower: larger and closer to the source)."""
    roles: str | None = None
    """A roles file (or a compose turns.json) saying who speaks when; speaking is then the voiced frames of
    each person's intervals instead of the audio-visual guess (``speech.roles``)."""


class Prepare:
    """Runs the stages for one video into one dataset directory."""

    def __init__(self, video: str | Path, out: str | Path, cfg: PrepareConfig, log=print):
        self.video, self.out, self.cfg, self.log = str(video), Path(out), cfg, log
        self.stages = self.out / ".stages"
        self.timings: dict[str, float] = {}
        self._redo = False
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._progress = self._stopping = None  # the workers' queue of frames done, and their stop

    # -- orchestration --------------------------------------------------------------------------
    def run(self) -> Path:
        """Run every stage; returns the dataset directory."""
        t_all = time.perf_counter()
        tune_process()
        ctx = self._check_source()
        try:
            # The torso stage's processes run while this one does the tracks, the audio and the QA pictures
            # (``_start_torso``, ``_torso_done``).
            for name, stage in [("people", self._people), ("persons", self._persons), ("tracks", self._tracks),
                                ("torso", self._torso), ("audio", self._audio), ("qa", self._qa),
                                ("torso", self._torso_done)]:
                t0 = time.perf_counter()
                stage(ctx)
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        except KeyboardInterrupt:  # (a studio's cancel reaches this process alone) the workers stop too, not after
            if self._pool is not None:  # their person pass
                workers_.interrupt(self._stopping)
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
        self.timings["total"] = time.perf_counter() - t_all
        self._write_meta(ctx)
        return self.out

    def _workers(self) -> concurrent.futures.ProcessPoolExecutor | None:
        """The per-person processes (None: one process does everything), started once and shared by the stages.

        Started as the people search begins: one finds the voice activity meanwhile."""
        workers = self.cfg.workers or (os.cpu_count() or 1)
        if workers <= 1:
            return None
        if self._pool is None:
            self._pool, self._progress, self._stopping = workers_.pool(workers)
            for _ in range(workers):
                self._pool.submit(workers_.warm_up)
        return self._pool

    def _done(self, *paths: Path) -> bool:
        """Whether a stage may be skipped: its outputs exist and no earlier stage had to run."""
        if not self._redo and all(p.exists() for p in paths):
            return True
        self._redo = True  # everything downstream read what this stage is about to rewrite
        return False

    # -- stage 0: the source, and whether --out may be written ---------------------------------
    def _check_source(self) -> dict:
        info = video_io.probe(self.video)
        if info.duration and info.duration < MIN_SECONDS:
            raise PrepareError(f"{self.video} lasts {info.duration:.2f} s; prepare needs at least {MIN_SECONDS:.0f} s")
        if not info.has_audio and not self.cfg.allow_silent:
            raise PrepareError(f"{self.video} has no audio track; pass --allow_silent to prepare it without sound")
        if self.cfg.roles:  # a malformed roles file is refused now, not after minutes of tracking
            read_roles(self.cfg.roles, [str(i) for i in range(MAX_ROLE_PERSONS)],
                       max(1, int((info.duration or 1e6) * self.cfg.fps)), self.cfg.fps)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe_file = self.out / f".write_test{os.getpid()}"
            probe_file.write_text("")
            probe_file.unlink()
        except OSError as e:
            raise PrepareError(f"cannot write to --out {self.out}: {e.strerror}") from None
        digest = sha256_of(self.video)
        prior = [json.loads(f.read_text()).get("source", {}).get("sha256")
                 for f in (self.out / "meta.json", self.stages / "source.json") if f.is_file()]
        if any(old and old != digest for old in prior) and not self.cfg.force:
            raise PrepareError(f"{self.out} holds the dataset of another video; choose another --out "
                               "or pass --force to replace it")
        if self.cfg.force or self._options_changed():
            self._clear()
        source = {"path": os.path.abspath(self.video), "sha256": digest, "fps": info.fps,
                  "width": info.width, "height": info.height, "duration": info.duration, "has_audio": info.has_audio}
        save_json(self.stages / "source.json", {"source": source, "config": dataclasses.asdict(self.cfg)})
        return {"info": info, "source": source}

    def _options_changed(self) -> bool:
        """True when a previous run of this video used other dataset-shaping options (then start over)."""
        path = self.stages / "source.json"
        if not path.is_file():
            return False
        old = json.loads(path.read_text()).get("config", {})
        new = dataclasses.asdict(self.cfg)
        # roles only shapes the audio stage, which checks its own source (``_audio``)
        changed = [k for k in new if k not in ("force", "workers", "roles") and old.get(k) != new[k]]
        if changed:
            self.log(f"options changed since the last run ({', '.join(changed)}); preparing from scratch")
        return bool(changed)

    def _clear(self) -> None:
        for name in ("meta.json", "audio.wav", "audio_features.npz", "expression_basis.npz", "background.png"):
            (self.out / name).unlink(missing_ok=True)
        for d in ("persons", "qa", ".stages"):
            shutil.rmtree(self.out / d, ignore_errors=True)

    # -- stage 1: find people, fix crop boxes, full-frame background --------------------------------
    def _people(self, ctx: dict) -> None:
        path = self.stages / "people.json"
        if self._done(path, self.out / "background.png"):
            ctx["people"] = json.loads(path.read_text())
            return
        info, cfg = ctx["info"], self.cfg
        n_expected = int(round(info.duration * cfg.fps))
        pool = self._workers()
        if pool is not None and info.has_audio:  # a core that would idle while this process finds the people
            ctx["vad"] = (n_expected, pool.submit(workers_.voice_activity, self.video, n_expected, cfg.fps))
        # Finding people needs only a few frames a second: ffmpeg drops the rest before the pipe.
        detector = people.FaceDetector()
        est = int(info.duration * cfg.detect_per_second) if info.duration else None
        dets, samples, tiled = [], [], set()
        plate_every = max(1, (est or 1) // FRAME_PLATE_SAMPLES)
        tile_every = max(1, round(cfg.detect_per_second))  # small faces: a tiled search about once a second
        with tqdm(total=est, desc="find people", unit="frame", leave=False) as bar:
            for i, frame in enumerate(video_io.iter_frames(self.video, cfg.detect_per_second)):
                if i % tile_every == 0:
                    tiled.add(i)
                dets.append(detector(frame, i, tiled=i in tiled))
                if i % plate_every == 0 and len(samples) < FRAME_PLATE_SAMPLES:
                    samples.append(frame)
                bar.update(1)
        detector.close()
        if len(dets) / cfg.detect_per_second < MIN_SECONDS:
            raise PrepareError(f"{self.video} lasts {len(dets) / cfg.detect_per_second:.2f} s; "
                               f"prepare needs at least {MIN_SECONDS:.0f} s")
        persons, dropped = people.select_persons(people.link_tracks(dets), len(dets), tiled, expected=cfg.persons)
        seen = [people.presence(p, len(dets), tiled) for p in persons]
        boxes = people.crop_boxes(persons, info.width, info.height)
        bands = people.split_columns(persons, info.width)
        # The full-frame plate is made by a thread of this process, which idles while the workers' person passes run
        # (it waits for them); the persons stage ends once the plate is saved.
        thread = concurrent.futures.ThreadPoolExecutor(1)
        ctx["plate"] = thread.submit(self._frame_plate, samples)
        thread.shutdown(wait=False)
        result = {"n_frames_expected": n_expected, "persons": [
            {"id": k, "bbox": list(boxes[k]), "columns": list(bands[k]),
             "face_median": [float(v) for v in p.median()], "detections": len(p.detections),
             "presence": seen[k]}
            for k, p in enumerate(persons)],
            "dropped": [{"face_median": [float(v) for v in d.track.median()], "detections": len(d.track.detections),
                         "reason": d.reason} for d in dropped]}
        save_json(path, result)
        ctx["people"] = result
        self.log(f"found {len(persons)} person(s):")
        for k, (p, box) in enumerate(zip(persons, boxes)):
            cx, cy, w, _ = p.median()
            self.log(f"  person {k}: face at x {cx:.0f}, y {cy:.0f} ({w:.0f} px), seen in "
                     f"{seen[k]:.0%} of the frames searched; crop box (x0, y0, side) {box}")
        for d in dropped[:MAX_DROPPED_SHOWN]:
            self.log(f"  dropped {d.describe()}")
        if len(dropped) > MAX_DROPPED_SHOWN:
            self.log(f"  dropped {len(dropped) - MAX_DROPPED_SHOWN} more face tracks seen in one frame or two")

    def _frame_plate(self, frames: list[np.ndarray]) -> None:
        """The full-frame background plate, ``background.png``: the median of the sampled frames where no one is."""
        segmenter = PersonSegmenter()
        try:
            nobody = [~segmenter(_square_pad(f))[: f.shape[0], : f.shape[1]] for f in frames]
        finally:
            segmenter.close()
        plate, _ = median_plate(np.stack(frames), np.stack(nobody), margin=max(2, frames[0].shape[1] // 100))
        save_image(self.out / "background.png", plate)

    # -- stage 2: per person crops, landmarks, parsing (one process each) ------------------------
    def _persons(self, ctx: dict) -> None:
        cfg, pp = self.cfg, ctx["people"]
        todo = []
        n_expected = pp["n_frames_expected"]
        qa_frames = tuple(np.linspace(0, max(n_expected - 1, 0), QA_FRAMES).round().astype(int).tolist())
        for p in pp["persons"]:
            pdir = dataset.person_dir(self.out, p["id"])
            job = person_track.PersonJob(self.video, cfg.fps, n_expected, tuple(p["bbox"]), tuple(p["columns"]),
                                         cfg.crop_size, str(pdir), str(self.stages), qa_frames, cfg.crf,
                                         cfg.smooth_pose)
            outputs = [pdir / "frames.mp4", pdir / "parsing.mkv", pdir / "background.png",
                       self.stages / f"landmarks_{p['id']}.npz"]
            if not self._done(*outputs):
                todo.append((p["id"], job))
        if todo:
            self._run_persons(ctx, todo, n_expected)
        if "plate" in ctx:
            ctx.pop("plate").result()
        counts = {len(dataset.load_npz(self.stages / f"landmarks_{p['id']}.npz")["found"]) for p in pp["persons"]}
        if len(counts) != 1:
            raise PrepareError(f"the decoder delivered different frame counts per person ({sorted(counts)}); "
                               "the video may be damaged: re-encode it and run again with --force")
        ctx["n_frames"] = counts.pop()

    def _run_persons(self, ctx: dict, todo: list, n_expected: int) -> None:
        """The person passes, in the workers where there are several; a person's torso jobs start as soon as its pass
        ends (``_start_torso``), so that a worker done first does not idle while the other finishes."""
        pool = self._workers()
        with tqdm(total=n_expected * len(todo), desc="landmarks+parsing", unit="crop", leave=False) as bar:
            if pool is None:
                for pid, job in todo:
                    self._save_landmarks(pid, person_track.run_person(job, pid, bar.update))
                return
            futures = {pool.submit(workers_.run_person, job, pid): pid for pid, job in todo}
            pending = set(futures)
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.2)
                while not self._progress.empty():
                    bar.update(self._progress.get())
                for fut in finished:
                    pid, res = futures[fut], fut.result()
                    self._save_landmarks(pid, res)
                    if "R" in res:  # the head was fitted: its reference frame is known
                        _, valid = person_track.fill_short_gaps(res["landmarks"], res["found"])
                        self._start_torso(ctx, {pid: (res["euler"], res["t"], valid)}, len(valid))

    def _save_landmarks(self, pid: int, res: dict) -> None:
        save_npz(self.stages / f"landmarks_{pid}.npz", **res)

    # -- stage 3: head pose, focal, expression basis, track.npz --------------------------------
    def _tracks(self, ctx: dict) -> None:
        cfg, pp = self.cfg, ctx["people"]
        ids = [p["id"] for p in pp["persons"]]
        outputs = [dataset.person_dir(self.out, i) / "track.npz" for i in ids] + [self.out / "expression_basis.npz"]
        if self._done(*outputs):
            return
        fits, raws = [], []
        for pid in ids:
            raw = dataset.load_npz(self.stages / f"landmarks_{pid}.npz")
            lm, valid = person_track.fill_short_gaps(raw["landmarks"], raw["found"])
            frac = valid.mean()
            if frac < person_track.MIN_VALID_FRACTION:
                raise PrepareError(f"person {pid}'s face was tracked in only {frac:.0%} of the frames (at least "
                                   f"{person_track.MIN_VALID_FRACTION:.0%} needed); the face is lost for most of the clip")
            if "R" not in raw:  # the person pass fitted the head, unless a version that did not left it
                raw |= person_track.fit_head(raw["landmarks"], raw["found"], cfg.crop_size, cfg.smooth_pose)
            fits.append(person_track.stored_head_fit(raw))
            raws.append((lm, valid, raw["found"], _head_cover(raw)))
        # The workers track the torsos (those the persons stage did not start) while this process fits the expressions,
        # the audio and the QA pictures.
        self._start_torso(ctx, {pid: (fit.euler, fit.t, valid) for pid, fit, (_, valid, *_) in zip(ids, fits, raws)},
                          ctx["n_frames"])
        shapes = [expression.pose_normalize(lm, fit.canonical, fit.rigid) for (lm, *_), fit in zip(raws, fits)]
        basis = expression.fit_expression_basis([s[v] for s, (_, v, *_) in zip(shapes, raws)], k=cfg.expression_k)
        save_npz(self.out / "expression_basis.npz", **dataclasses.asdict(basis))
        for pid, fit, shp, (lm, valid, found, cover) in zip(ids, fits, shapes, raws):
            person_mean = shp[valid].reshape(valid.sum(), -1).mean(0)
            save_npz(dataset.person_dir(self.out, pid) / "track.npz",
                     landmarks=lm.astype(np.float32), valid=valid, found=found,
                     R=fit.R.astype(np.float32), t=fit.t.astype(np.float32), euler=fit.euler.astype(np.float32),
                     expr=expression.encode(basis, shp, person_mean).astype(np.float32),
                     id_coeff=expression.identity_coefficients(basis, person_mean).astype(np.float32),
                     canonical=fit.canonical.astype(np.float32), rigid=fit.rigid, focal=np.float32(fit.focal),
                     reproj_px=fit.reproj_px.astype(np.float32))
            self.log(f"person {pid}: face tracked in {valid.mean():.1%} of frames, focal {fit.focal:.0f} px, "
                     f"reprojection {np.nanmedian(fit.reproj_px):.2f} px"
                     + (f", head label {cover:.0%} of the person above the chin" if np.isfinite(cover) else ""))
        kept = np.cumsum(basis.explained_variance_ratio)[basis.k - 1]
        self.log(f"expression basis: K = {basis.k}, {kept:.1%} of the variance")

    # -- stage 4: each person's torso motion, torso.npz -----------------------------------------
    def _torso(self, ctx: dict) -> None:
        """Start each person's torso tracking, in the worker processes (finished by ``_torso_done``), unless the
        persons or the tracks stage started it."""
        ids = [p["id"] for p in ctx["people"]["persons"]]
        if all(i in ctx.get("torso", {}) for i in ids):
            return
        outputs = [dataset.person_dir(self.out, i) / "torso.npz" for i in ids] + [self.out / "qa" / "torso_motion.png"]
        if self._done(*outputs):
            return
        tracks = {i: dataset.load_track(self.out, i) for i in ids}
        self._start_torso(ctx, {i: (tr["euler"], tr["t"], tr["valid"]) for i, tr in tracks.items()}, ctx["n_frames"])

    def _start_torso(self, ctx: dict, heads: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], n: int) -> None:
        """Submit the torso jobs of the persons in ``heads`` whose jobs have not started (``ctx["torso"]``: person id ->
        its jobs). ``heads``: each person's Euler angles, translations and valid frames, which pick its reference frame
        (a training frame near its mean pose); ``n``: the clip's frames."""
        pool = self._workers()
        a, b = dataset.splits(n)["train"]
        frames = np.arange(n)
        # With workers, each person's two sides of the reference frame are two jobs: a person whose torso is often
        # lost (each lost frame spends all of ECC's iterations) no longer holds up the stage alone.
        sides = ("after", "before") if pool else ("both",)
        started = ctx.setdefault("torso", {})
        for pid, (euler, t, valid) in heads.items():
            if pid in started:
                continue
            train = frames[a:b][valid[a:b]]
            ref = torso_track.reference_frame(euler.astype(np.float32), t.astype(np.float32),
                                              train if len(train) else frames[a:b])
            job = (str(self.out), str(self.stages), pid, n, self.cfg.crop_size, ref)
            started[pid] = ([pool.submit(workers_.track_torso, *job, side) for side in sides] if pool else
                            [workers_.track_torso(*job, side) for side in sides])

    def _torso_done(self, ctx: dict) -> None:
        """Collect the torso motions: log them, draw them, drop the working frames."""
        if "torso" not in ctx:
            return
        ids = [p["id"] for p in ctx["people"]["persons"]]
        jobs = ctx.pop("torso")
        motions = [_save_torso(self.out, pid, [p.result() if isinstance(p, concurrent.futures.Future) else p
                                                       for p in jobs[pid]])
                   for pid in ids]
        n = ctx["n_frames"]
        a, b = dataset.splits(n)["train"]
        idx = np.arange(n)
        held = [(idx < a) | (idx >= b)] * len(ids)
        for pid, ok in zip(ids, (np.isfinite(m).all(1) for m in motions)):
            self.log(f"person {pid}: torso tracked in {ok.mean():.1%} of frames" if ok.any() else
                     f"person {pid}: torso not tracked (too little torso in the crop, or no frame aligned): the NeRF "
                     "moves it with the head pose")
        size = min(self.cfg.crop_size, torso_track.WORK_SIZE)
        save_image(self.out / "qa" / "torso_motion.png",
                   qa.torso_motion_curves(motions, size, [f"person {i}" for i in ids], held))
        for pid in ids:  # the working frames are large (65 kB a frame); the dataset holds everything they were for
            for path in person_track.torso_frames_paths(self.stages, pid):
                path.unlink(missing_ok=True)

    # -- stage 5: audio features and who speaks -----------------------------------------------
    def _audio(self, ctx: dict) -> None:
        out_wav, out_npz = self.out / "audio.wav", self.out / "audio_features.npz"
        source = f"roles {sha256_of(self.cfg.roles)}" if self.cfg.roles else "audio-visual"
        if out_npz.exists() and str(dataset.load_npz(out_npz).get("speaking_source", "audio-visual")) != source:
            self._redo = True  # who speaks now comes from elsewhere: this stage and the ones after it rerun
        if self._done(out_wav, out_npz):
            return
        n, fps = ctx["n_frames"], self.cfg.fps
        early = ctx.pop("vad", None)  # the audio and its voice activity, found while the people were
        if early is not None and early[0] == n:  # (for the frame count expected)
            audio, *vad = early[1].result()
        else:
            vad = None
            audio = video_io.read_audio(self.video) if ctx["info"].has_audio else None
        audio = video_io.fit_audio(np.zeros(0, np.float32) if audio is None else audio, n, fps)
        ids = [p["id"] for p in ctx["people"]["persons"]]
        tracks = [dataset.load_track(self.out, i) for i in ids]
        valid = np.stack([t["valid"] for t in tracks], 1)
        who = speaking.speaking_timeline(audio, [t["landmarks"] for t in tracks], valid, n, fps,
                                         vad=vad)
        if self.cfg.roles:
            said = read_roles(self.cfg.roles, [str(i) for i in ids], n, fps)
            guessed = who["speaking"]
            who["speaking"] = said & who["voiced"][:, None]
            voiced = who["voiced"] & said.any(1)
            if voiced.any():
                agree = (guessed[voiced] == who["speaking"][voiced]).all(1).mean()
                self.log(f"speaking from {self.cfg.roles}; the audio-visual guess agreed on {agree:.0%} of its voiced frames")
        feats = audio_features(audio, n, fps)
        video_io.write_wav(out_wav, audio)
        save_npz(out_npz, mel=feats["mel"], zcr=feats["zcr"], rms=feats["rms"], speaking=who["speaking"],
                 voiced=who["voiced"], vad_prob=who["vad_prob"], speaker_scores=who["scores"],
                 mouth_open=who["mouth_open"], speaking_source=np.array(source))
        share = who["speaking"].mean(0)
        self.log("speaking share per person: " + ", ".join(f"{i}: {s:.0%}" for i, s in zip(ids, share)))

    # -- stage 6: pictures to check at a glance -------------------------------------------------
    def _qa(self, ctx: dict) -> None:
        qdir = self.out / "qa"
        names = ["contact_sheet.png", "pose_curves.png", "speaking_timeline.png", "mouth_and_speaking.png",
                 "expression_spectrum.png"]
        if self._done(*(qdir / n for n in names)):
            return
        n, fps = ctx["n_frames"], self.cfg.fps
        ids = [p["id"] for p in ctx["people"]["persons"]]
        pnames = [f"person {i}" for i in ids]
        tracks = [dataset.load_track(self.out, i) for i in ids]
        show = set(np.linspace(0, n - 1, QA_FRAMES).round().astype(int).tolist())
        tiles, captions = [], []
        for pid, tr in zip(ids, tracks):
            for f, crop, lab in self._qa_tiles(pid, show):
                lm = tr["landmarks"][f] if tr["valid"][f] else None
                tiles.append(qa.draw_landmarks(crop, lm, lab))
                captions.append(f"p{pid} f{f}" + ("" if tr["found"][f] else " (filled)" if tr["valid"][f] else ""))
        save_image(qdir / "contact_sheet.png", qa.contact_sheet(tiles, captions, columns=6, tile_size=200))
        euler = np.stack([t["euler"] for t in tracks], 1)
        trans = np.stack([t["t"] for t in tracks], 1)
        valid = np.stack([t["valid"] for t in tracks], 1)
        save_image(qdir / "pose_curves.png", qa.pose_curves(euler, trans, valid, fps, pnames))
        af = dataset.load_npz(self.out / "audio_features.npz")
        audio = video_io.read_wav(self.out / "audio.wav")[0]
        save_image(qdir / "speaking_timeline.png",
                   qa.speaking_timeline(audio, video_io.AUDIO_SR, af["speaking"], af["voiced"], fps, pnames))
        save_image(qdir / "mouth_and_speaking.png", qa.mouth_and_speaking(af["mouth_open"], af["speaking"], fps, pnames))
        basis = dataset.load_npz(self.out / "expression_basis.npz")
        save_image(qdir / "expression_spectrum.png",
                   qa.expression_spectrum(basis["explained_variance_ratio"], basis["exp_basis"].shape[1]))

    def _qa_tiles(self, pid: int, show: set[int]):
        """(frame, crop, labels) of the contact sheet's frames: those the person pass kept, else decoded."""
        path = person_track.qa_tiles_path(self.stages, pid)
        if path.is_file():
            kept = dataset.load_npz(path)
            if set(kept["frames"].tolist()) == show:
                yield from zip(kept["frames"].tolist(), kept["crops"], kept["labels"])
                return
        for f, (crop, lab) in enumerate(zip(dataset.iter_crops(self.out, pid), dataset.iter_parsing(self.out, pid))):
            if f > max(show):
                return
            if f in show:
                yield f, crop, lab

    # -- meta.json, last -------------------------------------------------------------------------
    def _write_meta(self, ctx: dict) -> None:
        pp, cfg = ctx["people"], self.cfg
        persons = []
        for p in pp["persons"]:
            tr = dataset.load_track(self.out, p["id"])
            persons.append({"id": p["id"], "bbox": p["bbox"], "crop_size": cfg.crop_size, "focal": float(tr["focal"]),
                            "valid_fraction": float(tr["valid"].mean()),
                            "head_cover": _none_if_nan(_head_cover(
                                dataset.load_npz(self.stages / f"landmarks_{p['id']}.npz"))),
                            "reprojection_px": float(np.nanmedian(tr["reproj_px"]))})
        basis = dataset.load_npz(self.out / "expression_basis.npz")
        k = basis["exp_basis"].shape[1]
        info = ctx["info"]
        meta = {
            "schema_version": dataset.SCHEMA_VERSION,
            "source": ctx["source"],
            "fps": cfg.fps, "n_frames": ctx["n_frames"], "frame_size": [info.width, info.height],
            "audio_sr": video_io.AUDIO_SR,
            "persons": persons,
            "splits": dataset.splits(ctx["n_frames"]),
            "expression": {"k": k, "variance_kept": float(np.cumsum(basis["explained_variance_ratio"])[k - 1])},
            "coordinates": "OpenCV crop camera, principal point at the crop centre; x_cam = R x_head + t; "
                           "euler = (pitch, yaw, roll), R = Rx(pitch) Ry(yaw) Rz(roll)",
            "config": dataclasses.asdict(cfg),
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "versions": _versions(),
        }
        save_json(self.out / "meta.json", meta)


def _head_cover(person_pass: dict) -> float:
    """The median share of the person above the chin that the head label covers (NaN: not measured), from the
    person pass's results."""
    cover = person_pass.get("head_cover")
    return float(np.nanmedian(cover)) if cover is not None and np.isfinite(cover).any() else float("nan")


def _none_if_nan(x: float) -> float | None:
    return None if not np.isfinite(x) else round(x, 4)


def _save_torso(out: str | Path, pid: int, parts: list[dict]) -> np.ndarray:
    """Join the sides ``workers.track_torso`` tracked into the person's torso.npz; returns the motion [n, 6] (NaN where not
    tracked)."""
    ref = parts[0]["reference"]
    after = np.arange(len(parts[0]["valid"])) >= ref
    pick = {p["side"]: p for p in parts}
    if "both" in pick:
        motion, ok, corr = pick["both"]["motion"], pick["both"]["valid"], pick["both"]["correlation"]
    else:
        motion, ok, corr = (np.where(after[:, None] if key == "motion" else after, pick["after"][key],
                                     pick["before"][key]) for key in ("motion", "valid", "correlation"))
    motion = np.where(ok[:, None], motion, np.nan).astype(np.float32)
    save_npz(dataset.person_dir(out, pid) / "torso.npz", motion=motion, reference=np.int64(ref),
             correlation=corr.astype(np.float32))
    return motion


def _square_pad(frame: np.ndarray) -> np.ndarray:
    """Pad a frame to a square so the square segmentation model sees it undistorted."""
    h, w = frame.shape[:2]
    s = max(h, w)
    return np.pad(frame, ((0, s - h), (0, s - w), (0, 0)))


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("mediapipe", "silero-vad", "numpy", "torch", "imageio-ffmpeg"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def prepare(video: str | Path, out: str | Path, cfg: PrepareConfig | None = None, log=print) -> Path:
    """Turn ``video`` into a dataset directory at ``out`` (see common.dataset)."""
    return Prepare(video, out, cfg or PrepareConfig(), log).run()
