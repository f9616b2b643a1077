"""The audio that drives the mouth: Wav2Lip's encoder and checkpoints, its pre-training, train and evaluate with it."""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import TrainError
from nerf.audio import load_audio_encoder
from nerf.audio_pretrain import AudioPretrainConfig, pretrain_audio
from nerf.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]

# Wav2Lip's audio_encoder as models/wav2lip.py of Rudrabha/Wav2Lip writes it (in, out, kernel, stride,
# padding, residual): the specification nerf.audio is held to.
WAV2LIP_SPEC = [(1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True),
                (32, 64, 3, (3, 1), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
                (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
                (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True),
                (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)]


class _Wav2LipConv(nn.Module):
    """Wav2Lip's models/conv.py Conv2d, restated."""

    def __init__(self, cin, cout, kernel, stride, padding, residual):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out += x
        return self.act(out)


class _Wav2LipAudioHalf(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_encoder = nn.Sequential(*(_Wav2LipConv(*s) for s in WAV2LIP_SPEC))


def _wav2lip_checkpoint(path: Path, prefix: str) -> nn.Module:
    """Write a checkpoint in the public wav2lip.pth layout with random weights and statistics; return its encoder."""
    torch.manual_seed(1)
    ref = _Wav2LipAudioHalf()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1000)
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    state[prefix + "face_encoder_blocks.0.0.conv_block.0.weight"] = torch.randn(16, 6, 7, 7)
    state[prefix + "face_decoder_blocks.0.0.conv_block.1.running_mean"] = torch.randn(512)
    state[prefix + "output_block.1.weight"] = torch.randn(3, 32, 1, 1)
    torch.save({"state_dict": state, "optimizer": None, "global_step": 1000, "global_epoch": 7}, path)
    return ref.eval()


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_a_wav2lip_checkpoint_gives_exactly_its_audio_encoders_codes(tmp_path, prefix):
    ref = _wav2lip_checkpoint(tmp_path / "wav2lip.pth", prefix)
    enc = load_audio_encoder(tmp_path / "wav2lip.pth")
    mel = torch.rand(5, 80, 16) * 8 - 4
    with torch.no_grad():
        want = ref.audio_encoder(mel[:, None]).flatten(1)
        got = enc(mel)
    assert got.shape == (5, 512) and (got >= 0).all()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())  # frozen, running statistics


def test_checkpoints_without_wav2lips_audio_encoder_are_refused(tmp_path):
    with pytest.raises(TrainError, match="not found"):
        load_audio_encoder(tmp_path / "absent.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(TrainError, match="cannot read"):
        load_audio_encoder(tmp_path / "text.pth")
    torch.save({"state_dict": {"module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(1)}},
               tmp_path / "face.pth")
    with pytest.raises(TrainError, match="no Wav2Lip audio encoder"):
        load_audio_encoder(tmp_path / "face.pth")
    ref = _Wav2LipAudioHalf()
    state = ref.state_dict()
    state["audio_encoder.12.conv_block.0.weight"] = torch.zeros(256, 512, 1, 1)  # a narrower last block
    torch.save({"state_dict": state}, tmp_path / "other.pth")
    with pytest.raises(TrainError, match="another architecture"):
        load_audio_encoder(tmp_path / "other.pth")


@pytest.fixture(scope="module")
def pretrained(synthetic, tmp_path_factory):
    """The audio encoder pre-trained for 30 steps on the synthetic conversation (about 10 s)."""
    out = tmp_path_factory.mktemp("audio")
    cfg = AudioPretrainConfig(data=[str(synthetic["dataset"])], iters=30, eval_every=10)
    facts = pretrain_audio(cfg, out / "audio.pt", log=lambda *_: None, progress=False, logdir=out / "tb")
    return {"ckpt": out / "audio.pt", "facts": facts, "tb": out / "tb"}


def test_pretraining_learns_the_held_out_mouth_from_the_voice(pretrained):
    val = pretrained["facts"]["val"]
    assert val["frames"] > 0
    # Held-out speaking frames: 0.93-0.96 measured (an untrained encoder: 0.17); sync chance is 1 in 27.
    assert val["mouth_open_corr"] >= 0.6, val
    assert val["sync_acc"] > 1 / 27, val
    assert list(pretrained["tb"].glob("events.out.tfevents.*"))
    saved = torch.load(pretrained["ckpt"], map_location="cpu", weights_only=True)
    assert json.loads(saved["config"])["iters"] == 30 and saved["facts"]["val"] == val
    enc = load_audio_encoder(pretrained["ckpt"])  # the same layout as Wav2Lip's own checkpoints
    torch.testing.assert_close(enc.state_dict(), {k: v for k, v in saved["state_dict"].items()
                                                  if k.startswith("audio_encoder.")})
    assert saved["state_dict"]["mouth_open_head.weight"].shape == (1, 512)  # what evaluate_audio.py scores with


def test_fine_tuning_keeps_the_start_unless_the_held_out_mouth_improves(synthetic, pretrained, tmp_path):
    from nerf.audio_pretrain import HEADS_PREFIX

    quiet = dict(log=lambda *_: None, progress=False)
    data = [str(synthetic["dataset"])]
    # a barely trained start (3 steps): 30 steps on the clip raise its held-out correlation, so they are kept
    weak = tmp_path / "weak.pt"
    pretrain_audio(AudioPretrainConfig(data=data, iters=3, eval_every=3), weak, **quiet)
    facts = pretrain_audio(AudioPretrainConfig(data=data, iters=30, eval_every=30, init=str(weak)), tmp_path / "ft.pt",
                           **quiet)
    assert facts["kept"] == "fine-tuned" and facts["val"] == facts["val_fine_tuned"]
    assert facts["val"]["mouth_open_corr"] > facts["val_start"]["mouth_open_corr"]
    assert facts["val"]["mouth_open_corr"] >= 0.6, facts  # the 30-step encoder from scratch: 0.93-0.96
    # a step size that wrecks the encoder: the start comes back, bit for bit, heads included
    facts = pretrain_audio(AudioPretrainConfig(data=data, iters=5, eval_every=5, lr=10.0, init=str(pretrained["ckpt"])),
                           tmp_path / "wrecked.pt", **quiet)
    assert facts["kept"] == "start" and not facts["val_fine_tuned"]["mouth_open_corr"] > facts["val_start"]["mouth_open_corr"]
    start = torch.load(pretrained["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    kept = torch.load(tmp_path / "wrecked.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith(HEADS_PREFIX) for k in kept)
    torch.testing.assert_close(kept, start, rtol=0, atol=0)
    # a public Wav2Lip checkpoint has no training heads to fine-tune: one clear error
    torch.save({"state_dict": _Wav2LipAudioHalf().state_dict()}, tmp_path / "wav2lip.pth")
    with pytest.raises(TrainError, match="lacks the heads"):
        pretrain_audio(AudioPretrainConfig(data=data, iters=2, init=str(tmp_path / "wav2lip.pth")), tmp_path / "x.pt",
                       **quiet)
    assert not (tmp_path / "x.pt").exists()


def test_train_fine_tunes_the_shipped_prior_by_default_and_uses_it_frozen_with_zero_steps(synthetic, tmp_path):
    from nerf.audio import SHIPPED_ENCODER
    from nerf.trainer import audio_encoder_of

    cfg = TrainConfig(data=[str(synthetic["dataset"])], audio_pretrain_iters=0)
    frozen = audio_encoder_of(cfg, tmp_path, log=lambda *_: None, progress=False)
    torch.testing.assert_close(frozen.state_dict(), load_audio_encoder(SHIPPED_ENCODER).state_dict(), rtol=0, atol=0)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert not (tmp_path / "audio_encoder.pt").exists()
    lines = []
    cfg = TrainConfig(data=[str(synthetic["dataset"])], audio_pretrain_iters=2)
    audio_encoder_of(cfg, tmp_path, log=lines.append, progress=False)
    saved = torch.load(tmp_path / "audio_encoder.pt", map_location="cpu", weights_only=True)
    assert json.loads(saved["config"])["init"] == str(SHIPPED_ENCODER) and "val_start" in saved["facts"]
    assert any(str(SHIPPED_ENCODER) in line for line in lines)


def _evaluate_audio(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_audio.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_evaluate_audio_scores_an_encoder_and_the_energy_envelope_per_person(synthetic, pretrained):
    from common import dataset
    from data_prep.audio_features import mel_windows
    from nerf.audio_eval import load_predictor
    from nerf.metrics import pearson

    done = _evaluate_audio("--data", synthetic["dataset"], "--encoder", pretrained["ckpt"], "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["dataset"], r["person"]) for r in rows] == [(synthetic["dataset"].name, 0), (synthetic["dataset"].name, 1)]
    ds = synthetic["dataset"]
    meta, af = dataset.read_meta(ds), dataset.load_npz(ds / "audio_features.npz")
    predicted = load_predictor(pretrained["ckpt"]).opening(torch.from_numpy(mel_windows(af["mel"], meta["n_frames"],
                                                                                          meta["fps"])))
    for r in rows:
        p = r["person"]
        scored = dataset.load_track(ds, p)["valid"] & af["speaking"][:, p].astype(bool) & np.isfinite(af["mouth_open"][:, p])
        real = af["mouth_open"][:, p].astype(np.float64)[scored]
        assert r["frames"] == scored.sum() > 20
        assert r["corr"] == pytest.approx(pearson(predicted[scored], real), abs=1e-9)
        assert r["energy_corr"] == pytest.approx(pearson(np.log(af["rms"][scored].astype(np.float64) + 1e-4), real),
                                                 abs=1e-9)
        # the synthetic jaw drops with its voice: both signals follow it, in sync (0.8-0.9 measured for the encoder)
        assert r["corr"] > 0.6 and abs(r["offset"]) <= 1 and abs(r["energy_offset"]) <= 1
    val = [json.loads(line) for line in _evaluate_audio("--data", synthetic["dataset"], "--encoder", pretrained["ckpt"],
                                                        "--split", "val", "--json").stdout.splitlines()]
    a, b = meta["splits"]["val"]  # the held-out tenth only
    for v in val:
        p = v["person"]
        scored = dataset.load_track(ds, p)["valid"] & af["speaking"][:, p].astype(bool) & np.isfinite(af["mouth_open"][:, p])
        assert v["frames"] == scored[a:b].sum() < scored.sum()
    assert max(v["frames"] for v in val) > 0
    table = _evaluate_audio("--data", synthetic["dataset"], "--encoder", pretrained["ckpt"])
    assert table.returncode == 0 and "| median |" in table.stdout and "energy corr" in table.stdout


def test_evaluate_audio_refuses_an_encoder_it_cannot_score_and_a_folder_that_is_no_dataset_in_one_line(
        synthetic, pretrained, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    _wav2lip_checkpoint(tmp_path / "wav2lip.pth", "module.")  # an encoder, but no mouth head to score
    for path, words in [(tmp_path / "broken.pt", "cannot read"), (tmp_path / "wav2lip.pth", "no mouth-opening head"),
                        (tmp_path / "absent.pt", "not found")]:
        done = _evaluate_audio("--data", synthetic["dataset"], "--encoder", path)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and words in done.stderr and str(path) in done.stderr, done.stderr
    done = _evaluate_audio("--data", tmp_path, "--encoder", pretrained["ckpt"])
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def _tiny(synthetic, out, **kw) -> TrainConfig:
    return TrainConfig(data=[str(synthetic["dataset"])], out=str(out), iters=2, image_size=32, batch_rays=64,
                       n_coarse=8, n_importance=4, hidden=16, n_levels=4, log2_hashmap_size=10, base_resolution=8,
                       finest_resolution=64, val_every=10**9, ckpt_every=10**9, **kw)


def test_train_with_a_wav2lip_checkpoint_codes_frames_with_it_and_evaluate_reports_lip_sync(synthetic, pretrained,
                                                                                            tmp_path):
    from nerf.evaluate import evaluate

    run = tmp_path / "run"
    train(_tiny(synthetic, run, wav2lip_ckpt=str(pretrained["ckpt"])), log=lambda *_: None, progress=False)
    assert not (run / "audio_encoder.pt").exists()  # no pre-training stage
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    torch.testing.assert_close(ckpt["audio_encoder"], load_audio_encoder(pretrained["ckpt"]).state_dict())
    result = evaluate(run / "checkpoint.pt", [str(synthetic["dataset"])], tmp_path / "eval")
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"]
    assert [(r["person"], r["role"]) for r in rows] == [(r["person"], r["role"]) for r in result["rows"]]
    speaking = [r for r in rows if r["role"] == "speaking"]
    assert speaking and all({"mouth_open_corr", "av_offset", "av_corr", "av_offset_real"} <= set(r) for r in speaking)
    assert all("mouth_open_corr" in r and "av_offset" not in r for r in rows if r["role"] == "listening")
    assert all(math.isfinite(r["av_offset_real"]) for r in speaking)  # the real frames have faces
    assert "av_offset" in result["table"].splitlines()[0]


def _pretrain_cli():
    spec = importlib.util.spec_from_file_location("pretrain_audio_cli", ROOT / "scripts" / "pretrain_audio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_cli_teaches_in_help_and_refuses_bad_input_in_one_line(synthetic, tmp_path, capsys):
    cli = _pretrain_cli()
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    helptext = capsys.readouterr().out
    assert "--wav2lip_ckpt" in helptext and "InfoNCE" in helptext and "--config" in helptext
    assert cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "a.pt")]) == 1
    assert "no meta.json" in capsys.readouterr().err
    assert cli.main(["--data", str(synthetic["dataset"]), "--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert cli.main(["--data", str(synthetic["dataset"]), "--out", str(tmp_path / "b.pt"), "--iters", "0"]) == 1
    assert "iters >= 1" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_audio.py"), "--data", str(tmp_path / "none"),
                           "--out", str(tmp_path / "c.pt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.pt"))


def test_pretraining_refuses_a_conversation_where_nobody_speaks(synthetic, tmp_path):
    copy = tmp_path / "silent"
    shutil.copytree(synthetic["dataset"], copy, ignore=shutil.ignore_patterns("*.mp4", "*.mkv", "qa"))
    features = dict(np.load(copy / "audio_features.npz"))
    features["speaking"][:] = False
    np.savez(copy / "audio_features.npz", **features)
    with pytest.raises(TrainError, match="nobody speaks"):
        pretrain_audio(AudioPretrainConfig(data=[str(copy)], iters=1), tmp_path / "a.pt", log=lambda *_: None,
                       progress=False)
    assert not (tmp_path / "a.pt").exists()


def test_the_encoder_kept_is_the_running_average_of_the_trained_weights():
    """Early steps move the average most (a short fine-tuning still counts), later ones by 1 - AVERAGE_DECAY; batch
    norm's running statistics are averaged and its step counter copied."""
    from nerf.audio_pretrain import AVERAGE_DECAY, WeightAverage

    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    average = WeightAverage(net)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(8, 2))  # batch norm's statistics and counter move
    average.update(net, 0)  # decay 1/10: nine tenths of the way
    torch.testing.assert_close(average.state["0.weight"], start["0.weight"] + 0.9)
    torch.testing.assert_close(average.state["1.running_mean"], start["1.running_mean"]
                               + 0.9 * (net[1].running_mean - start["1.running_mean"]))
    assert average.state["1.num_batches_tracked"] == net[1].num_batches_tracked == 1
    before = average.state["0.weight"].clone()
    average.update(net, 10_000)
    torch.testing.assert_close(average.state["0.weight"], before + (1 - AVERAGE_DECAY) * (net[0].weight - before))
    assert not torch.equal(average.state["0.weight"], net[0].weight)  # the average is a copy, not the live weights


def test_augmented_windows_keep_silence_silent_and_the_sound_where_it_was():
    """Noise, band-limiting, pitch and tempo make another microphone and voice, not another utterance: a silent
    window stays at the floor (noise is mixed at an SNR to the window's own sound), the loudest moment of a burst stays
    within two mel columns (tempo changes of up to 15% about the centre), and a generator's seed gives the same
    windows."""
    from nerf.audio_pretrain import _power, augment, noise_bank

    bank = noise_bank(seconds=1.0)
    silence = torch.full((64, 80, 16), -4.0)
    quiet = augment(silence, bank, torch.Generator().manual_seed(0))
    ratio = _power(quiet).sum((1, 2)) / _power(silence).sum((1, 2))  # noise at SNR >= 0 dB: at most twice the power
    assert quiet.min() >= -4.0 and ratio.max() <= 2.0 + 1e-4 and (ratio > 1.01).any()
    burst = torch.full((200, 80, 16), -3.0)
    burst[:, 10:60, 9] = 2.0
    out = augment(burst, bank, torch.Generator().manual_seed(1))
    assert torch.equal(out, augment(burst, bank, torch.Generator().manual_seed(1)))
    assert out.min() >= -4.0 and out.max() <= 4.0
    changed = (out - burst).abs().amax((1, 2)) > 0.5
    assert 0.7 < changed.float().mean() < 1.0  # (each of the four changes on half of the windows)
    loudest = out[:, 10:60].mean(1).argmax(-1)
    assert ((loudest - 9).abs() <= 2).float().mean() >= 0.9


def test_the_shipped_prior_loads_as_a_wav2lip_encoder_with_its_mouth_head_and_names_its_data():
    from nerf.audio import SHIPPED_ENCODER
    from nerf.audio_eval import load_predictor

    assert SHIPPED_ENCODER.stat().st_size <= 20 * 2**20
    load_audio_encoder(SHIPPED_ENCODER)  # train.py --wav2lip_ckpt reads it so
    predictor = load_predictor(SHIPPED_ENCODER)
    saved = torch.load(SHIPPED_ENCODER, map_location="cpu", weights_only=True)
    config = json.loads(saved["config"])
    assert any(k.startswith("pretrain_heads.") for k in saved["state_dict"])  # train.py fine-tunes from it
    assert config["iters"] == 900 and len(config["data"]) == 17 and all(d.startswith("data/dev/") for d in config["data"])
    # silence and a loud window of noise: the encoder tells them apart (the mouth is not predicted constant)
    silent, loud = torch.full((1, 80, 16), -4.0), torch.rand(1, 80, 16, generator=torch.Generator().manual_seed(0)) * 3
    assert abs(predictor.opening(silent)[0] - predictor.opening(loud)[0]) > 0.1


def test_evaluate_speech_finds_the_mouth_that_follows_the_voice_and_not_a_frozen_one(synthetic, tmp_path):
    from common.video_io import iter_frames, read_audio, write_video

    # person 0 of the synthetic conversation alone (the left half): the jaw opens with its voice
    frames = [f[:, : f.shape[1] // 2] for f in iter_frames(synthetic["video"])]
    audio = read_audio(synthetic["video"])
    write_video(tmp_path / "talks.mp4", frames, 25, audio=audio)
    write_video(tmp_path / "frozen.mp4", [frames[0]] * len(frames), 25, audio=audio)
    truth = synthetic["truth"]
    for name in ("talks", "frozen"):
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_speech.py"), "--video",
                              str(tmp_path / f"{name}.mp4"), "--out", str(tmp_path / name), "--json"],
                             capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        assert "AUC" in run.stdout and (tmp_path / f"{name}.png").stat().st_size > 10_000
    talks = json.loads((tmp_path / "talks.json").read_text())
    frozen = json.loads((tmp_path / "frozen.json").read_text())
    assert talks["frames"] == frozen["frames"] == len(frames) and talks["faces"] > 0.95
    # Speech is both voices; person 0 talks in about half of it (its jaw is closed in the other's turns).
    share = truth["speaking"][:, 0].mean() / max(truth["speaking"].any(1).mean(), 1e-9)
    assert 0.3 < share < 0.7
    assert talks["auc"] > 0.65 and talks["open_speech"] > talks["open_silence"], talks
    # one picture (the encoder's noise moves its landmarks a little): the mouth ignores the speech
    assert abs(frozen["auc"] - 0.5) < 0.15 and frozen["moves_speech"] < 0.25 * talks["moves_speech"], (frozen, talks)
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_speech.py"), "--video",
                          str(tmp_path / "none.mp4"), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr


def test_an_offset_that_could_not_be_scored_reads_as_none_not_as_in_sync():
    from nerf.audio_eval import _shift, table
    from nerf.metrics import av_offset

    few = np.full(100, np.nan)
    few[[10, 11]] = [0.1, 0.2]  # two scored frames: no shift can be told
    assert _shift(av_offset(np.random.default_rng(0).random(100), few)) is None
    rows = [{"dataset": "d", "person": 0, "frames": 2, "corr": float("nan"), "offset": None, "energy_corr": float("nan"),
             "energy_offset": None},
            {"dataset": "e", "person": 0, "frames": 90, "corr": 0.5, "offset": 1, "energy_corr": 0.1, "energy_offset": -2}]
    lines = table(rows).splitlines()
    assert lines[2].endswith("| nan | - | nan | - |") and "| +1 |" in lines[3] and "| +1 |" in lines[4]


def test_evaluate_audio_scores_speech_against_silence_on_audio_files_without_video(synthetic, pretrained, tmp_path):
    from common.video_io import read_audio, write_wav
    from speech.speaking import voice_activity

    audio = read_audio(synthetic["video"])
    write_wav(tmp_path / "voice.wav", audio)
    write_wav(tmp_path / "quiet.wav", 0.3 * audio[: len(audio) // 2])
    done = _evaluate_audio("--speech", tmp_path, "--encoder", pretrained["ckpt"], "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["audio"] for r in rows] == ["quiet.wav", "voice.wav", "all"]
    T = int(len(audio) / 16000 * 25)
    voiced, _ = voice_activity(audio, T, 25.0)
    assert rows[1]["frames"] == T and rows[1]["speech"] == pytest.approx(voiced.mean())
    assert rows[2]["frames"] == rows[0]["frames"] + rows[1]["frames"]
    # the synthetic voices open the synthetic jaws: speech reads as a more open mouth than the pauses
    assert rows[1]["auc"] > 0.7 and rows[1]["open_speech"] > rows[1]["open_silence"]
    bad = _evaluate_audio("--speech", tmp_path / "nothing.wav")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "no such audio file" in bad.stderr
    none = _evaluate_audio("--encoder", pretrained["ckpt"])
    assert none.returncode == 2 and "give --data" in none.stderr


def test_frame_codes_code_a_track_on_its_own_batch_norm_statistics_and_leave_the_encoders_own():
    from nerf.audio import ADAPT_MIN_WINDOWS, Wav2LipAudioEncoder, adapted_to, frame_codes

    torch.manual_seed(0)
    enc = Wav2LipAudioEncoder().eval()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    mel = torch.rand(ADAPT_MIN_WINDOWS + 10, 80, 16) * 8 - 4
    with adapted_to(enc, mel):  # one chunk: the first batch norm holds the mean of its input over these windows
        first = enc.audio_encoder[0].conv_block
        with torch.no_grad():
            pre = first[0](mel[:, None])
        torch.testing.assert_close(first[1].running_mean, pre.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(first[1].running_var, pre.var((0, 2, 3)), rtol=1e-3, atol=1e-5)
        assert not enc.training
    with torch.no_grad():
        plain = enc(mel)
    adapted = frame_codes(enc, mel)
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the track's statistics, not the stored ones
    torch.testing.assert_close(frame_codes(enc, mel[:ADAPT_MIN_WINDOWS - 1]), plain[:ADAPT_MIN_WINDOWS - 1])  # too few
    enc.train()
    frame_codes(enc, mel)
    assert enc.training and all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())  # its own again


def test_a_pretraining_batch_holds_two_voices_in_equal_shares_in_the_order_they_are_coded():
    from nerf.audio_pretrain import VOICES_PER_BATCH, SpeakerData, _batch, _pick, _shifts

    def speaker(name, frames):
        T = 40
        return SpeakerData(name=name, mel=torch.randn(T, 80, 16), target=torch.randn(T, 121),
                           usable=torch.ones(T, dtype=torch.bool), train=torch.tensor(frames), val=torch.tensor([]))

    speakers = [speaker("a", [1, 2, 3]), speaker("b", []), speaker("c", [10, 11]), speaker("d", [20, 21, 22, 23])]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        who, frame, voices = _pick(speakers, 32, gen)
        assert len(voices) == VOICES_PER_BATCH == 2 and voices == [16, 16] and 1 not in who.tolist()
        first, second = who[:16].unique(), who[16:].unique()
        assert len(first) == len(second) == 1 and first < second  # _batch's order: by speaker
        assert all(int(f) in speakers[int(w)].train.tolist() for w, f in zip(who, frame))
        mel = _batch(speakers, who, frame, _shifts(AudioPretrainConfig()))[0]
        torch.testing.assert_close(mel[:16], speakers[int(first)].mel[frame[:16]])
    who, _, voices = _pick(speakers[:2], 32, gen)  # one person speaks: one voice
    assert voices == [32] and set(who.tolist()) == {0}
