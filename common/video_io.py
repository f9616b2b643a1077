"""Video and audio in and out through the ffmpeg binary inside imageio-ffmpeg.

Frame i of a decoded clip is the picture at time i / fps; the audio is
resampled to 16 kHz mono (any rate, any channel count; the channels are mixed
so the mix is never louder than the loudest channel) and padded or trimmed to
exactly n_frames / fps seconds, so frames and audio share one clock whatever
the source fps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from common.atomic_io import atomic_path, temp_name
from common.errors import PrepareError

AUDIO_SR = 16000
AHEAD = 2
"""Frames a decoder reads ahead of its reader and a writer holds for its encoder, each in a thread of its own: the
decoding and encoding processes then run while the caller works on a frame, instead of waiting for each other through
a pipe that holds a tenth of a frame (prepare's person passes on 2 cores: measured in docs/PERFORMANCE.md)."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclasses.dataclass
class VideoInfo:
    """What ffmpeg says about a file before any frame is decoded."""

    path: str
    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's size, fps, duration and whether it has an audio track.

    Raises:
        PrepareError: the file is missing or holds no decodable video stream.
    """
    import imageio_ffmpeg

    path = str(path)
    if not os.path.isfile(path):
        raise PrepareError(f"video not found: {path}")
    gen = imageio_ffmpeg.read_frames(path)
    try:
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as e:
        raise PrepareError(f"{path} is not a video ffmpeg can decode ({str(e).splitlines()[0][:200]})") from None
    finally:
        gen.close()
    size = meta.get("size") or (0, 0)
    fps = float(meta.get("fps") or 0.0)
    duration = float(meta.get("duration") or 0.0)
    if size[0] <= 0 or fps <= 0:
        raise PrepareError(f"{path} has no video stream with a frame size and frame rate")
    return VideoInfo(path, int(size[0]), int(size[1]), fps, duration, bool(meta.get("audio_codec")))


def iter_frames(path: str | os.PathLike, fps: float | None = None, gray: bool = False,
                crop: tuple[int, int, int] | None = None, size: int | None = None) -> Iterator[np.ndarray]:
    """Decode frames one at a time: RGB [H, W, 3] uint8, or [H, W] uint8 with ``gray``.

    Args:
        fps: resample to this rate with ffmpeg's fps filter (None: every stored frame).
        gray: decode a single-channel video (the parsing label videos).
        crop: (x0, y0, side) square to cut out, inside ffmpeg (no full frame crosses the pipe).
        size: with ``crop``, the side the square is resized to.
    """
    import logging

    try:
        import imageio_ffmpeg
    except ImportError:  # a machine without it (the GPU machine): OpenCV's decoder, for stored frames as they are
        if fps or crop is not None:
            raise
        yield from _iter_frames_cv2(path, gray)
        return

    # It warns whenever the output size differs from the source's, which a crop always does.
    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)
    filters = [f"fps={fps}"] if fps else []
    if crop is not None:
        x0, y0, side = crop
        size = size or side
        filters += [f"crop={side}:{side}:{x0}:{y0}", f"scale={size}:{size}:flags={'area' if side > size else 'bilinear'}"]
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="gray" if gray else "rgb24", bits_per_pixel=8 if gray else 24,
                                     output_params=["-vf", ",".join(filters)] if filters else None)
    meta = next(gen)
    w, h = meta["size"]  # the size after the filters
    shape = (h, w) if gray else (h, w, 3)
    yield from (np.frombuffer(buf, np.uint8).reshape(shape) for buf in _read_ahead(gen))


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _read_ahead(gen: Iterator, depth: int = AHEAD) -> Iterator:
    """``gen``'s items, read by a thread up to ``depth`` items ahead of the caller. ``gen`` is closed in that thread
    when it ends, fails, or the caller stops early; its exceptions reach the caller."""
    items: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in gen:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001  (handed to the caller)
            put(_Failed(e))
        finally:
            gen.close()

    thread = threading.Thread(target=run, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def read_audio(path: str | os.PathLike, sr: int = AUDIO_SR) -> np.ndarray | None:
    """Decode the first audio track as mono float32 at ``sr`` Hz; None when there is none.

    Channels are mixed with ffmpeg's matrix scaled so that no output exceeds the loudest
    input channel (stereo: the mean of left and right); ffmpeg's default gives identical
    left and right channels +3 dB, which clips near full scale.
    """
    try:
        exe = ffmpeg_exe()
    except ImportError:  # a machine without imageio-ffmpeg (the lent GPU one): files libsndfile reads
        audio, rate = read_wav(path)
        if rate != sr:
            from scipy.signal import resample_poly

            g = math.gcd(rate, sr)
            audio = resample_poly(audio, sr // g, rate // g).astype(np.float32)
        return audio if audio.size else None
    cmd = [exe, "-v", "error", "-nostdin", "-i", str(path), "-vn", "-map", "0:a:0?",
           "-ac", "1", "-rematrix_maxval", "1.0", "-ar", str(sr), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise PrepareError(f"could not decode the audio of {path}: {proc.stderr.decode(errors='replace')[:200]}")
    audio = np.frombuffer(proc.stdout, np.float32).copy()
    return audio if audio.size else None


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A sound file that libsndfile reads (WAV, FLAC, OGG), mixed to mono: (float32 samples, rate in Hz).

    Without ffmpeg (a machine that lacks imageio-ffmpeg), ``read_audio`` decodes through this.
    """
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise PrepareError(f"could not read the audio of {path}: {e}") from None
    return audio.mean(1), int(rate)


def fit_audio(audio: np.ndarray, n_frames: int, fps: float, sr: int = AUDIO_SR) -> np.ndarray:
    """Pad with silence or trim so the audio lasts exactly n_frames / fps seconds.

    Warns when a non-empty track differs from the video by more than one frame (containers
    often differ by a few milliseconds; an empty track is the caller's known silent clip).
    """
    n = int(round(n_frames / fps * sr))
    if audio.size and abs(audio.size - n) > sr / fps:
        warnings.warn(f"the audio lasts {audio.size / sr:.2f} s and the video {n / sr:.2f} s: the audio was "
                      f"{'trimmed' if audio.size > n else 'padded with silence'} to the video's length", stacklevel=2)
    if audio.size >= n:
        return audio[:n]
    return np.pad(audio, (0, n - audio.size))


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int = AUDIO_SR) -> None:
    """Write mono float audio as 16-bit PCM wav, atomically."""
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")


class FrameWriter:
    """Stream frames into a video file that appears only when complete (context manager).

    Args:
        path: the final file; frames go to a temporary name beside it until a clean exit.
        fps: frame rate.
        gray: [H, W] uint8 frames written losslessly (FFV1 in Matroska: label maps
            compress to a few kB a frame); else [H, W, 3] uint8 RGB as H.264.
        audio: mono float audio at ``sr`` to mux in as AAC (RGB only).
        crf: x264 quality, lower is better (18 is visually lossless for most content).
        pix_fmt: H.264 pixel format; ``yuv444p`` keeps full colour resolution (training crops).
        preset: x264 speed preset (faster presets: larger files at the same quality).
    """

    def __init__(self, path: str | os.PathLike, fps: float, gray: bool = False, audio: np.ndarray | None = None,
                 sr: int = AUDIO_SR, crf: int = 18, pix_fmt: str = "yuv420p", preset: str = "medium"):
        self.path, self.fps, self.gray, self.audio, self.sr = Path(path), fps, gray, audio, sr
        self.crf, self.pix_fmt, self.preset = crf, pix_fmt, preset
        self.n = 0
        self._writer = None
        self._size = None

    def __enter__(self) -> FrameWriter:
        self._tmpdir = tempfile.TemporaryDirectory()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(temp_name(self.path))
        return self

    def _open(self, h: int, w: int) -> None:
        import imageio_ffmpeg

        self._size = (h, w)
        if self.gray:
            kw = dict(pix_fmt_in="gray", pix_fmt_out="gray", codec="ffv1", output_params=["-f", "matroska"])
        else:
            audio_path = None
            if self.audio is not None:
                audio_path = str(Path(self._tmpdir.name) / "audio.wav")
                write_wav(audio_path, self.audio, self.sr)
            kw = dict(codec="libx264", pix_fmt_out=self.pix_fmt, audio_path=audio_path,
                      audio_codec="aac" if audio_path else None,
                      output_params=["-crf", str(self.crf), "-preset", self.preset, "-movflags", "+faststart"])
        self._writer = imageio_ffmpeg.write_frames(str(self._tmp), (w, h), fps=self.fps, quality=None,
                                                   macro_block_size=1, ffmpeg_log_level="error", **kw)
        self._writer.send(None)

    def write(self, frame: np.ndarray) -> None:
        """Queue one frame for the encoder (a thread hands it over; the caller goes on)."""
        if self._writer is None:
            self._open(*frame.shape[:2])
            self._frames = queue.Queue(AHEAD)
            self._failed = None
            self._thread = threading.Thread(target=self._send, name="write-behind", daemon=True)
            self._thread.start()
        if frame.shape[:2] != self._size:
            raise PrepareError(f"frame {self.n} of {self.path} is {frame.shape[:2]}, expected {self._size}")
        if self._failed is not None:
            raise self._failed
        out = np.ascontiguousarray(frame, dtype=np.uint8)
        self._frames.put(out.copy() if out is frame and frame.flags.writeable else out)  # the caller may reuse it
        self.n += 1

    def _send(self) -> None:
        """The encoder's feeder: frames from the queue to ffmpeg until None; after a failure it only drains."""
        while (frame := self._frames.get()) is not None:
            if self._failed is None:
                try:
                    self._writer.send(frame)
                except BaseException as e:  # noqa: BLE001  (raised in the caller's thread)
                    self._failed = e

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._writer is not None:
                self._frames.put(None)
                self._thread.join()
                self._writer.close()
                if self._failed is not None and exc_type is None:
                    raise self._failed
            if exc_type is None:
                if self.n == 0:
                    raise PrepareError(f"no frames to write to {self.path}")
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
            self._tmpdir.cleanup()


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float,
                audio: np.ndarray | None = None, sr: int = AUDIO_SR, crf: int = 18,
                pix_fmt: str = "yuv420p") -> int:
    """Encode [H, W, 3] uint8 frames as H.264 mp4 (audio muxed when given), atomically.

    Returns:
        The number of frames written.
    """
    with FrameWriter(path, fps, audio=audio, sr=sr, crf=crf, pix_fmt=pix_fmt) as w:
        for frame in frames:
            w.write(frame)
    return w.n


def _iter_frames_cv2(path: str | os.PathLike, gray: bool) -> Iterator[np.ndarray]:
    """Every stored frame through OpenCV (its bundled FFmpeg): the same pixels as imageio-ffmpeg's rgb24/gray
    for the datasets' H.264 crops and grey label videos (checked frame for frame on the dev datasets)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot decode {path} (no imageio-ffmpeg here, and OpenCV cannot open it)")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame[..., 0].copy() if gray else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
