"""The studio's pages (Gradio Blocks): Prepare, Train, Direct, Replay.

Each page queues a job (``studio.jobs``) that runs the project's own command (prepare.py, train.py then
train_posegen.py, render.py), and shows the newest job of its kind: its state, a progress bar read from the
command's own progress bar, the log's tail, and what it made. A timer refreshes the pages every 1.5 s from the
files on disk, so a reload (or a restart of the studio) shows the same state. Errors are the commands' one-line
errors, or ``StudioError``'s for bad input; a page never shows a traceback.
"""

from __future__ import annotations

import functools
import html
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import turns
from studio.jobs import CANCELLED, DONE, FAILED, INTERRUPTED, QUEUED, RUNNING, Job, JobQueue
from studio.workspace import VIDEO_TYPES, StudioError, Workspace, avatar_persons, check_name, safe_stem, write_roles

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"CPU quick look (64 px, tiny model)": "cpu_tiny.txt", "GPU full (512 px)": "gpu_full.txt"}
# posegen on a clip of seconds (the CPU quick look) needs a shorter window than configs/posegen.txt's 4 s
QUICK_POSEGEN = ["--window_s", "2.0", "--epochs", "60", "--val_fraction", "0.25"]
TICK_S = 1.5
CSS = ".studio-error {color: #b00020; font-weight: 600} progress {width: 100%; height: 14px}"


def _message(text: str, error: bool = False) -> str:
    cls = "studio-error" if error else "studio-ok"
    return f'<div class="{cls}">{html.escape(text)}</div>' if text else ""


def guarded(n_out: int):
    """A page handler whose StudioError (or any other failure) becomes a one-line message in its last output and
    leaves its other outputs as they are."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*args)
            except StudioError as e:
                msg = str(e)
            except Exception as e:  # (never a traceback page: the line names what failed)
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'failed'}"
            keep = [gr.update()] * (n_out - 1)
            return (*keep, _message(msg, error=True)) if n_out > 1 else _message(msg, error=True)

        return run

    return wrap


def quietly(fn, n_out: int):
    """A refresh whose failure (a file being written, a log cut short) leaves the page as it is until the next one."""

    @functools.wraps(fn)
    def run(*args):
        try:
            return fn(*args)
        except Exception:
            return tuple(gr.update() for _ in range(n_out)) if n_out > 1 else gr.update()

    return run


class Studio:
    """The pages of one workspace and its job queue."""

    def __init__(self, ws: Workspace, queue: JobQueue):
        self.ws, self.queue = ws, queue

    # --- a job's panel ---
    def panel(self, kind: str) -> tuple[str, str]:
        """(status HTML, log tail) of the newest job of ``kind``."""
        job = self.queue.latest(kind)
        if job is None:
            return "<div>no job yet</div>", ""
        frac, what = self.queue.progress(job)
        when = time.strftime("%H:%M:%S", time.localtime(job.created))
        head = f"<b>{html.escape(job.title)}</b> &middot; {job.status} &middot; queued {when}"
        if job.status == QUEUED:
            ahead = sum(1 for j in self.queue.jobs() if j.status in (QUEUED, RUNNING) and j.created < job.created)
            head += f" &middot; {ahead} job(s) ahead"
        body = f'<progress value="{frac * 100:.0f}" max="100"></progress><div>{html.escape(what)}</div>'
        if job.status == FAILED or job.error:
            body += _message(f"error: {job.error}", error=True)
        return f'<div class="job job-{job.status}" data-status="{job.status}" data-job="{job.id}">{head}{body}</div>', \
            self.queue.log_tail(job.id)

    def _submit(self, kind: str, title: str, steps: list[list[str]], target: Path | str) -> None:
        """Queue a job; a target that is busy already is the user's error, said in one line."""
        try:
            self.queue.submit(kind, title, steps, target if isinstance(target, str) else self.ws.rel(target))
        except ValueError as e:
            raise StudioError(str(e)) from None

    def _act(self, kind: str, action: str) -> str:
        job = self.queue.latest(kind)
        if job is None:
            raise StudioError("there is no job to " + action)
        if action == "cancel":
            if job.finished:
                raise StudioError(f"{job.title} is {job.status}: there is nothing to stop")
            self.queue.cancel(job.id)
            return _message(f"stopping {job.title}" if job.status == RUNNING else f"cancelled {job.title}")
        if job.status not in (FAILED, CANCELLED, INTERRUPTED):
            raise StudioError(f"{job.title} is {job.status}: only a failed, cancelled or stopped job resumes")
        try:
            self.queue.resume(job.id)
        except ValueError as e:
            raise StudioError(str(e)) from None
        return _message(f"queued {job.title} again: it goes on where it stopped")

    # --- Prepare ---
    def prepare(self, upload, existing, name, persons, crop) -> tuple:
        if not upload and not existing:
            raise StudioError("upload a video, or choose one already in the workspace")
        if name:
            check_name(name, "dataset name")
        # An upload is copied into the workspace only once the job is sure to be queued: a refused try leaves nothing.
        src = self.ws.check_video(upload) if upload else None
        video = self.ws.video_destination(src) if src else self.ws.upload(existing)
        name = check_name(name or safe_stem(video.parent if video.parent.name != "uploads" else video), "dataset name")
        out = self.ws.root / "datasets" / name
        if (out / "meta.json").is_file():
            raise StudioError(f"a dataset named {name} exists already: choose another name")
        busy = self.queue.busy(self.ws.rel(out))
        if busy:
            raise StudioError(f"{self.ws.rel(out)} already has a job {busy.status} ({busy.id}): wait for it or cancel it")
        if src:
            self.ws.keep(src, video)
        cmd = ["scripts/prepare.py", "--video", str(video), "--out", str(out), "--crop_size", str(int(crop))]
        if persons and int(persons) > 0:
            cmd += ["--persons", str(int(persons))]
        self._submit("prepare", f"prepare {name}", [cmd], out)
        return (gr.update(choices=self.ws.videos(), value=str(video.relative_to(self.ws.root / "uploads"))),
                _message(f"queued: prepare {video.name} into {name}"))

    def make_examples(self) -> str:
        """The synthetic example: a two-person conversation to prepare, and other speech to direct it with."""
        up = self.ws.root / "uploads"
        if (up / "example" / "conversation.mp4").is_file() and (up / "example_speech" / "conversation.mp4").is_file():
            raise StudioError("the example clips are in the workspace already: example/conversation.mp4 (to prepare) "
                              "and example_speech/conversation.mp4 (speech for Direct)")
        steps = [["scripts/make_synthetic.py", "--out", str(up / "example"), "--seconds", "8"],
                 ["scripts/make_synthetic.py", "--out", str(up / "example_speech"), "--seconds", "8", "--seed", "7"]]
        self._submit("prepare", "make the example clips", steps, "uploads/example")
        return _message("queued: the example conversation (uploads/example/conversation.mp4, to prepare) and new "
                        "speech for it (uploads/example_speech/conversation.mp4, for Direct)")

    def dataset_view(self, name) -> tuple:
        if not name:
            return [], [], ""
        return self.ws.qa_pictures(name), self.ws.persons(name), ""

    def save_names(self, name, rows) -> str:
        if not name:
            raise StudioError("choose a dataset first")
        rows = rows.values.tolist() if isinstance(rows, pd.DataFrame) else rows
        shown = self.ws.set_names(name, rows)
        return _message(f"saved: {', '.join(shown)} (an avatar trained on {name} from now on carries these names)")

    # --- Train ---
    def train(self, data, preset, minutes, name) -> tuple:
        if not data:
            raise StudioError("choose a prepared dataset")
        ds = self.ws.dataset(data)
        name = check_name(name or data, "avatar name")
        run = self.ws.root / "runs" / name
        cfg = PRESETS.get(preset)
        if cfg is None:
            raise StudioError("choose a preset")
        cmd = ["scripts/train.py", "--config", f"configs/{cfg}", "--data", str(ds), "--out", str(run), "--resume"]
        if minutes and float(minutes) > 0:
            cmd += ["--time_budget_s", f"{float(minutes) * 60:.0f}"]
        pg = ["scripts/train_posegen.py", "--config", "configs/posegen.txt", "--data", str(ds), "--out",
              str(run / "posegen")] + (QUICK_POSEGEN if cfg == "cpu_tiny.txt" else [])
        self._submit("train", f"train {name} on {data}", [cmd, pg], run)
        run.mkdir(parents=True, exist_ok=True)
        return gr.update(choices=self.ws.runs(), value=name), \
            _message(f"queued: train {name} ({preset}), then its head motion (posegen)")

    def run_view(self, run) -> tuple:
        """(curve, latest validation picture, the avatar's files) of a run."""
        try:
            if not run or not (self.ws.root / "runs" / check_name(run, "avatar")).is_dir():
                return None, None, None
        except StudioError:
            return None, None, None
        rows = self.ws.curves(run)
        curve = pd.DataFrame(rows, columns=["iteration", "PSNR (dB)", "curve"]) if rows else None
        val = self.ws.latest_validation(run)
        done = self.queue.latest("train", f"runs/{run}")
        files = [str(p) for p in self.ws.downloads(run)] if done is None or done.status == DONE else []
        return curve, str(val) if val else None, files or None

    def add_avatar(self, upload, posegen, name) -> tuple:
        target = f"runs/{check_name(name, 'avatar name')}"
        busy = self.queue.busy(target)  # a training queued into that folder would resume from the file added
        if busy:
            raise StudioError(f"{target} already has a job {busy.status} ({busy.id}): choose another name")
        run = self.ws.add_avatar(upload, posegen, name)
        choices = self.ws.avatars()
        note = "" if (run / "posegen" / "checkpoint.pt").is_file() else \
            " (no posegen file: Direct needs one; Replay does not)"
        return gr.update(choices=choices, value=run.name), gr.update(choices=choices), \
            _message(f"added avatar {run.name}{note}")

    # --- Direct ---
    def guess_turns(self, avatar, speech, picked) -> tuple:
        if not avatar:
            raise StudioError("choose an avatar")
        if not speech and not picked:
            raise StudioError("upload or record speech, or choose speech already in the workspace")
        wav = self.ws.add_speech(speech or str(self.ws.upload(picked)))
        rows, seconds = turns.guess(self.ws.avatar(avatar), wav)
        pic = turns.picture(wav, rows, wav.with_suffix(".turns.png"))
        return rows, str(pic), str(wav), _message(f"{len(rows)} turn(s) in {seconds:.1f} s of speech: edit them "
                                                  "if they are wrong, then render")

    def redraw(self, wav, rows) -> tuple:
        """(the waveform with the edited turns, a message)."""
        if not wav or not Path(wav).is_file():
            return None, ""
        rows = rows.values.tolist() if isinstance(rows, pd.DataFrame) else rows
        return str(turns.picture(self.ws.inside(wav), rows, Path(wav).with_suffix(".turns.png"))), ""

    def direct(self, avatar, wav, rows, layout, samples, max_s, name) -> str:
        if not avatar:
            raise StudioError("choose an avatar")
        if not wav:
            raise StudioError("upload or record speech, then press 'Who speaks when?'")
        run = self.ws.avatar(avatar)
        wav = self.ws.inside(wav)
        if not (run / "posegen" / "checkpoint.pt").is_file():
            raise StudioError(f"avatar {avatar} has no head-motion model (posegen): train it here, or use Replay")
        name = check_name(name, "video name")
        out = self.ws.root / "renders" / f"{name}.mp4"
        from common.video_io import read_wav

        busy = self.queue.busy(self.ws.rel(out))
        if busy:  # (before its roles file is written over)
            raise StudioError(f"renders/{name}.mp4 already has a job {busy.status}: wait for it, cancel it, or "
                              "choose another video name")
        audio, sr = read_wav(wav)
        names, labels, _, _ = avatar_persons(run)
        rows = rows.values.tolist() if isinstance(rows, pd.DataFrame) else rows
        roles = write_roles(rows, names, labels, len(audio) / sr, self.ws.root / "renders" / f"{name}.roles.json")
        cmd = ["scripts/render.py", "--ckpt", str(run / "checkpoint.pt"), "--posegen",
               str(run / "posegen" / "checkpoint.pt"), "--audio", str(wav), "--roles", str(roles), "--layout", layout,
               "--samples", str(int(samples)), "--out", str(out)]
        if max_s and float(max_s) > 0:
            cmd += ["--max_seconds", f"{float(max_s):g}"]
        self._submit("render", f"render {name}", [cmd], out)
        return _message(f"queued: render {name}.mp4")

    # --- Replay ---
    def source_persons(self, data) -> tuple:
        """(the person dropdown of a dataset, a message)."""
        if not data:
            return gr.update(choices=[], value=None), ""
        rows = self.ws.persons(data)
        choices = [f"{r[0]}" + (f" ({r[1]})" if r[1] else "") for r in rows]
        return gr.update(choices=choices, value=choices[0] if choices else None), ""

    def replay(self, avatar, data, person, max_s, name) -> str:
        if not avatar or not data or person is None:
            raise StudioError("choose an avatar, a dataset whose motion drives it, and its person")
        run, src = self.ws.avatar(avatar), self.ws.dataset(data)
        name = check_name(name, "video name")
        out = self.ws.root / "renders" / f"{name}.mp4"
        pid = str(person).split(" ", 1)[0]
        cmd = ["scripts/render.py", "--ckpt", str(run / "checkpoint.pt"), "--audio", str(src / "audio.wav"),
               "--pose_from", f"{src}:{pid}", "--out", str(out)]
        if max_s and float(max_s) > 0:
            cmd += ["--max_seconds", f"{float(max_s):g}"]
        self._submit("replay", f"replay {name}", [cmd], out)
        return _message(f"queued: {avatar} driven by {data} person {pid}, into {name}.mp4")

    def video_of(self, kind: str) -> str | None:
        job = self.queue.latest(kind)
        if job is None or job.status != DONE:
            return None
        path = self.ws.root / job.target
        return str(path) if path.is_file() else None

    def choices(self) -> tuple:
        ds, av = self.ws.datasets(), self.ws.avatars()
        return (gr.update(choices=self.ws.videos()), gr.update(choices=ds), gr.update(choices=ds),
                gr.update(choices=av), gr.update(choices=av), gr.update(choices=ds), gr.update(choices=self.ws.runs()),
                gr.update(choices=self.ws.speech()))


def _job_panel(label: str):
    status = gr.HTML("<div>no job yet</div>", elem_classes=["job-panel"], elem_id=f"{label}-status")
    with gr.Row():
        stop = gr.Button("Cancel / stop", size="sm")
        again = gr.Button("Resume", size="sm")
    with gr.Accordion(f"{label} log", open=False):
        log = gr.Textbox(lines=12, max_lines=12, show_label=False, interactive=False, autoscroll=True)
    return status, stop, again, log


def build(ws: Workspace, queue: JobQueue) -> gr.Blocks:
    """The studio's Blocks app."""
    s = Studio(ws, queue)
    # Gradio serves a copy of every file it shows (an avatar file, a video) from .gradio/: copies older than 6 hours
    # go every hour, the rest when the studio stops (the workspace keeps the originals)
    with gr.Blocks(title="DialogueNeRF studio", analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as app:
        gr.Markdown("# DialogueNeRF studio\nA conversation video in, new conversations out: **Prepare** the video, "
                    "**Train** one avatar for everyone in it, **Direct** it with new speech, or **Replay** a recorded "
                    f"motion. Everything lives in `{ws.root}`.")
        with gr.Tab("Prepare", id="prepare"):
            with gr.Row():
                with gr.Column():
                    video = gr.File(label="Conversation video (two or more people, one audio track)",
                                    file_types=list(VIDEO_TYPES), type="filepath", elem_id="prepare-video")
                    with gr.Row():
                        existing = gr.Dropdown(ws.videos(), label="or a video already in the workspace", value=None,
                                               scale=3, elem_id="prepare-existing")
                        example_btn = gr.Button("Make the example clips (synthetic, 8 s)", scale=1)
                    with gr.Row():
                        ds_name = gr.Textbox(label="Dataset name (default: the video's)", placeholder="talk",
                                             elem_id="prepare-name")
                        n_persons = gr.Number(0, label="Persons (0: find them all)", precision=0)
                        crop = gr.Radio([512, 256, 128], value=512, label="Crop side, px (the CPU preset trains at 64)",
                                        elem_id="prepare-crop")
                    prep_btn = gr.Button("Prepare", variant="primary", elem_id="prepare-run")
                    prep_msg = gr.HTML(elem_id="prepare-msg")
                with gr.Column():
                    prep_status, prep_stop, prep_again, prep_log = _job_panel("prepare")
            ds_pick = gr.Dropdown(ws.datasets(), label="Dataset", value=None, elem_id="prepare-dataset")
            qa = gr.Gallery(label="QA pictures", columns=3, height="auto", elem_id="prepare-qa")
            persons = gr.Dataframe(headers=["id", "name", "face tracked", "head cover", "crop (x y side)"],
                                   datatype=["number", "str", "str", "str", "str"], interactive=True,
                                   static_columns=[0, 2, 3, 4], type="array", label="Persons (name them here)",
                                   elem_id="prepare-persons")
            names_btn = gr.Button("Save names", elem_id="prepare-save-names")
            names_msg = gr.HTML(elem_id="prepare-names-msg")
        with gr.Tab("Train", id="train"):
            with gr.Row():
                with gr.Column():
                    train_ds = gr.Dropdown(ws.datasets(), label="Dataset", value=None, elem_id="train-dataset")
                    preset = gr.Radio(list(PRESETS), value=next(iter(PRESETS)), label="Preset")
                    minutes = gr.Number(0, label="Time budget of the NeRF training, minutes (0: the preset's iterations; the "
                                        "whole CPU quick look of the example: about 2 min)",
                                        elem_id="train-minutes")
                    run_name = gr.Textbox(label="Avatar name (default: the dataset's)", elem_id="train-name")
                    train_btn = gr.Button("Train", variant="primary", elem_id="train-run")
                    train_msg = gr.HTML(elem_id="train-msg")
                with gr.Column():
                    train_status, train_stop, train_again, train_log = _job_panel("train")
            run_pick = gr.Dropdown(ws.runs(), label="Avatar", value=None, elem_id="train-avatar")
            with gr.Row():
                curve = gr.LinePlot(x="iteration", y="PSNR (dB)", color="curve", label="PSNR while training",
                                    height=260)
                val_img = gr.Image(label="Latest validation: rendered / real, per person", type="filepath",
                                   interactive=False)
            files = gr.File(label="The avatar file and its head-motion model (download)", file_count="multiple",
                            interactive=False, elem_id="train-files")
        with gr.Tab("Direct", id="direct"):
            with gr.Row():
                with gr.Column():
                    avatar = gr.Dropdown(ws.avatars(), label="Avatar", value=None, elem_id="direct-avatar")
                    speech = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech",
                                      elem_id="direct-speech")
                    speech_pick = gr.Dropdown(ws.speech(), label="or speech already in the workspace (a video's "
                                              "sound track too)", value=None, elem_id="direct-speech-pick")
                    guess_btn = gr.Button("Who speaks when?", elem_id="direct-guess")
                    wav = gr.State(None)
                    wave = gr.Image(label="Turns on the waveform", type="filepath", interactive=False)
                    table = gr.Dataframe(headers=["start (s)", "end (s)", "person"], datatype=["number", "number", "str"],
                                         interactive=True, type="array", label="Who speaks when (edit me)",
                                         elem_id="direct-turns")
                with gr.Column():
                    layout = gr.Radio(["original", "conference"], value="original", label="Layout")
                    samples = gr.Slider(1, 4, value=1, step=1, label="Listener reactions side by side")
                    max_s = gr.Number(0, label="Seconds to render (0: all the speech)", elem_id="direct-seconds")
                    out_name = gr.Textbox("conversation", label="Video name", elem_id="direct-name")
                    render_btn = gr.Button("Render", variant="primary", elem_id="direct-run")
                    direct_msg = gr.HTML(elem_id="direct-msg")
                    direct_status, direct_stop, direct_again, direct_log = _job_panel("render")
                    out_video = gr.Video(label="Rendered conversation", interactive=False, elem_id="direct-video")
            with gr.Accordion("Add an avatar file from another machine", open=False):
                with gr.Row():
                    av_file = gr.File(label="avatar (checkpoint.pt)", file_types=[".pt"], type="filepath")
                    pg_file = gr.File(label="its posegen checkpoint.pt (optional)", file_types=[".pt"],
                                      type="filepath")
                    av_name = gr.Textbox(label="Name")
                av_btn = gr.Button("Add avatar")
                av_msg = gr.HTML()
        with gr.Tab("Replay", id="replay"):
            with gr.Row():
                with gr.Column():
                    rp_avatar = gr.Dropdown(ws.avatars(), label="Avatar", value=None, elem_id="replay-avatar")
                    rp_data = gr.Dropdown(ws.datasets(), label="Motion (and speech) from dataset", value=None,
                                          elem_id="replay-data")
                    rp_person = gr.Dropdown([], label="Its person whose motion drives the avatar", elem_id="replay-person")
                    rp_max = gr.Number(0, label="Seconds to render (0: all)", elem_id="replay-seconds")
                    rp_name = gr.Textbox("replay", label="Video name", elem_id="replay-name")
                    rp_btn = gr.Button("Render", variant="primary", elem_id="replay-run")
                    rp_msg = gr.HTML(elem_id="replay-msg")
                with gr.Column():
                    rp_status, rp_stop, rp_again, rp_log = _job_panel("replay")
                    rp_video = gr.Video(label="Replay", interactive=False, elem_id="replay-video")

        # --- wiring ---
        prep_btn.click(guarded(2)(s.prepare), [video, existing, ds_name, n_persons, crop], [existing, prep_msg])
        ds_pick.change(guarded(3)(s.dataset_view), [ds_pick], [qa, persons, names_msg])
        names_btn.click(guarded(1)(s.save_names), [ds_pick, persons], [names_msg])
        train_btn.click(guarded(2)(s.train), [train_ds, preset, minutes, run_name], [run_pick, train_msg])
        run_pick.change(quietly(s.run_view, 3), [run_pick], [curve, val_img, files])
        example_btn.click(guarded(1)(s.make_examples), None, [prep_msg])
        guess_btn.click(guarded(4)(s.guess_turns), [avatar, speech, speech_pick], [table, wave, wav, direct_msg])
        table.input(guarded(2)(s.redraw), [wav, table], [wave, direct_msg])
        render_btn.click(guarded(1)(s.direct), [avatar, wav, table, layout, samples, max_s, out_name], [direct_msg])
        av_btn.click(guarded(3)(s.add_avatar), [av_file, pg_file, av_name], [avatar, rp_avatar, av_msg])
        rp_data.change(guarded(2)(s.source_persons), [rp_data], [rp_person, rp_msg])
        rp_btn.click(guarded(1)(s.replay), [rp_avatar, rp_data, rp_person, rp_max, rp_name], [rp_msg])
        for kind, stop, again, msg in (("prepare", prep_stop, prep_again, prep_msg),
                                       ("train", train_stop, train_again, train_msg),
                                       ("render", direct_stop, direct_again, direct_msg),
                                       ("replay", rp_stop, rp_again, rp_msg)):
            stop.click(guarded(1)(functools.partial(s._act, kind, "cancel")), None, [msg])
            again.click(guarded(1)(functools.partial(s._act, kind, "resume")), None, [msg])

        # Every tick: the job panels from disk; when a job has just ended, what it made.
        seen = gr.State({})
        lists = [existing, ds_pick, train_ds, avatar, rp_avatar, rp_data, run_pick, speech_pick]

        def tick(seen: dict, run: str | None):
            out = []
            for kind in ("prepare", "train", "render", "replay"):
                out += list(s.panel(kind))
            ended = {}
            for kind in ("prepare", "train", "render", "replay"):
                job: Job | None = queue.latest(kind)
                ended[kind] = f"{job.id}:{job.status}" if job else ""
            changed = ended != seen
            out += list(s.choices()) if changed else [gr.update()] * len(lists)
            train_job = queue.latest("train")
            live = train_job is not None and train_job.status == RUNNING
            out += list(s.run_view(run)) if run and (live or changed) else [gr.update()] * 3
            out += [s.video_of("render") if changed else gr.update(), s.video_of("replay") if changed else gr.update()]
            return ended, *out

        panels = [prep_status, prep_log, train_status, train_log, direct_status, direct_log, rp_status, rp_log]
        timer = gr.Timer(TICK_S)
        outputs = [seen, *panels, *lists, curve, val_img, files, out_video, rp_video]
        tick = quietly(tick, len(outputs))
        timer.tick(tick, [seen, run_pick], outputs, show_progress="hidden")
        app.load(tick, [seen, run_pick], outputs, show_progress="hidden")
    return app
