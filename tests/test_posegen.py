"""posegen: the causal TCN and its streaming runner, the sampling noise, the metrics, the planted
reaction law of synthetic dyads, and the two command-line tools on a prepared dataset."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from posegen import metrics as M
from posegen.evaluate import evaluate_conversations
from posegen.model import SmoothNoise, fit_noise_pole, generate
from posegen.synthetic import FPS, NOD_DEG, NOD_LAG_S, NOD_S, synthetic_dyad
from posegen.tcn import TCN, StreamingTCN, TCNConfig
from posegen.train import PoseTrainConfig, load_checkpoint, train

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _random_tcn(levels=3, kernel=3, seed=0):
    torch.manual_seed(seed)
    net = TCN(TCNConfig(5, 4, channels=8, levels=levels, kernel_size=kernel, dropout=0.0))
    torch.nn.init.normal_(net.head.weight)  # the head starts at zero; make every path visible
    return net.eval()


def test_tcn_is_causal_with_the_stated_receptive_field():
    net = _random_tcn(levels=3, kernel=3)
    rf = net.receptive_field
    assert rf == 1 + 2 * 2 * (2 ** 3 - 1) == 29
    x = torch.randn(1, 80, 5)
    y = net(x)
    x2 = x.clone()
    x2[0, 40] += 10.0
    changed = (net(x2) - y).abs().amax(-1)[0] > 1e-6
    assert not changed[:40].any(), "an output depends on a future input"
    assert changed[40] and changed[40 + rf - 1], "the receptive field is shorter than stated"
    assert not changed[40 + rf:].any(), "the receptive field is longer than stated"


def test_streaming_step_matches_the_batch_forward():
    net = _random_tcn(levels=4, kernel=2, seed=1)
    x = torch.randn(2, 60, 5)
    with torch.no_grad():
        full = net(x)
    stream = StreamingTCN(net, batch=2)
    steps = torch.stack([stream.step(x[:, t]) for t in range(60)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_smooth_noise_has_unit_variance_is_batch_independent_and_its_pole_is_recoverable():
    poles = np.array([0.0, 0.6, 0.9, 0.97])
    x = SmoothNoise(poles, seed=1, batch=300).sample(600)
    np.testing.assert_allclose(x.reshape(-1, 4).var(0), 1.0, atol=0.06)
    np.testing.assert_allclose(x[:, 0].var(0), 1.0, atol=0.2)  # starts stationary, no warm-up
    a, b = SmoothNoise(poles, seed=5, batch=2), SmoothNoise(poles, seed=5, batch=2)
    np.testing.assert_array_equal(a.sample(20), np.stack([b.next() for _ in range(20)], 1))
    fitted = fit_noise_pole([SmoothNoise(poles, seed=3).sample(4000)[0]])
    np.testing.assert_allclose(fitted, poles, atol=0.05)


def test_metrics_on_known_signals():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-4)
    assert M.frechet_distance(a, a + [2.0, 0, 0]) == pytest.approx(4.0, abs=1e-4)
    assert M.frechet_distance(a, 2 * a) == pytest.approx(3 * (2 - 1) ** 2, rel=0.05)  # Tr(S + 4S - 2*2S) = 3
    assert M.frdiv(np.stack([a, a])) == 0.0 and M.frdiv(np.stack([a, a + 1])) == pytest.approx(1.0)
    partner = rng.standard_normal((4000, 2))
    assert M.rpcc(a, a.copy(), partner) == 0.0
    assert M.rpcc(partner[:, :1], -partner[:, :1], partner[:, :1]) == pytest.approx(2.0)
    t = np.arange(int(20 * FPS))
    pitch = np.zeros(len(t))
    for start in (50, 200, 350):  # three 0.5 s nods of 6 degrees
        inside = (t >= start) & (t < start + 12)
        pitch[inside] += 6 * 0.5 * (1 - np.cos(2 * np.pi * (t[inside] - start) / 12))
    pitch += 0.2 * rng.standard_normal(len(t))
    assert M.count_nods(pitch, FPS) == 3
    assert M.nods_per_minute(pitch, FPS, np.ones(len(t), bool)) == pytest.approx(9.0)
    assert M.count_nods(pitch, FPS, mask=t < 150) == 1


@pytest.fixture(scope="module")
def dyads_model(tmp_path_factory):
    """posegen trained on synthetic dyads with the planted law (about 20 s on one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as scripts/train_posegen.py does: the small networks are fastest on one
    try:
        data = [synthetic_dyad(90.0, seed=s) for s in range(6)]
        cfg = PoseTrainConfig(out=str(tmp_path_factory.mktemp("pg")), epochs=20, channels=32, levels=5, window_s=4.0)
        facts = train(cfg, [c for c, _ in data])
        model, stats, ckpt = load_checkpoint(facts["ckpt"])
    finally:
        torch.set_num_threads(threads)
    return model, stats, data, facts


def test_the_listener_learns_to_nod_after_loud_speech(dyads_model):
    model, stats, data, _ = dyads_model
    real, gen = [], []
    for conv, truth in data:
        g = generate(model, stats, conv.persons, conv.audio, conv.speaking, conv.fps, samples=3, seed=1,
                     speaker_pose=conv.pose)
        for on in truth["onsets"]:
            if conv.train_end <= on and on + 30 < conv.n_frames:  # held-out onsets only
                real.append(np.rad2deg(conv.pose[on: on + 30, 1, 0]))
                gen.append(np.rad2deg(g["pose"][:, on: on + 30, 1, 0]).mean(0))
    assert len(real) >= 20
    real, gen = np.mean(real, 0), np.mean(gen, 0)
    lo, hi = (NOD_LAG_S[0] + NOD_S / 2) * FPS, (NOD_LAG_S[1] + NOD_S / 2) * FPS
    assert lo - 2 <= int(np.argmax(gen)) <= hi + 2, f"generated nod peaks at frame {np.argmax(gen)}: {gen.round(1)}"
    assert gen.max() >= 0.5 * real.max() and gen.max() >= 0.3 * NOD_DEG
    assert abs(gen[:5].mean()) < 1.0  # no nod before the speaker gets loud


def test_posegen_beats_mime_and_mean_pose_and_its_samples_differ(dyads_model):
    model, stats, data, _ = dyads_model
    res = evaluate_conversations(model, stats, [c for c, _ in data], samples=3)
    lis = res["summary"]["listener"]
    # The joint speaker-listener distribution (P-FD) and the coupling (rPCC) are what Mime gets wrong;
    # its plain FD is low here because the synthetic speaker moves like the listener once normalized.
    assert lis["posegen"]["p_fd"] < lis["mime"]["p_fd"] and lis["posegen"]["p_fd"] < lis["mean"]["p_fd"], lis
    assert lis["posegen"]["fd"] < lis["mean"]["fd"], lis
    assert lis["posegen"]["rpcc"] < lis["mime"]["rpcc"], lis
    assert lis["posegen"]["frdiv"] > 0.2
    assert 0.5 < lis["posegen"]["frvar"] / lis["posegen"]["frvar_real"] < 1.5  # not over-smoothed
    spk = res["summary"]["speaker"]
    assert spk["posegen"]["fd"] < spk["mean"]["fd"]


def test_same_seed_same_motion_other_seed_other_motion(dyads_model):
    model, stats, data, _ = dyads_model
    c = data[0][0]
    run = lambda seed: generate(model, stats, c.persons, c.audio, c.speaking, c.fps, samples=2, seed=seed)  # noqa: E731
    a, b, other = run(3), run(3), run(4)
    np.testing.assert_array_equal(a["pose"], b["pose"])
    assert np.abs(a["pose"] - other["pose"]).mean() > 1e-3
    assert np.abs(a["pose"][0] - a["pose"][1]).mean() > 1e-3  # the K samples differ too
    assert a["pose"].shape == (2, c.n_frames, 2, 6) and a["expr"].shape == (2, c.n_frames, 2, 8)


def _cli(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_train_and_evaluate_commands_on_a_prepared_conversation(synthetic, tmp_path):
    out = tmp_path / "pg"
    proc = _cli("train_posegen.py", "--data", synthetic["dataset"], "--out", out, "--epochs", 3, "--channels", 16,
                "--window_s", 2.0, "--val_fraction", 0.3)
    assert proc.returncode == 0, proc.stderr
    assert (out / "checkpoint.pt").is_file() and any((out / "tb").iterdir())
    proc = _cli("evaluate_posegen.py", "--ckpt", out / "checkpoint.pt", "--data", synthetic["dataset"],
                "--samples", 2, "--out", out / "eval")
    assert proc.returncode == 0, proc.stderr
    assert "posegen" in proc.stdout and "nn_audio" in proc.stdout
    for name in ("table.txt", "metrics.json", f"pose_curves_{synthetic['dataset'].name}.png"):
        assert (out / "eval" / name).is_file(), name


def test_bad_inputs_give_one_line_errors(synthetic, tmp_path, capsys):
    import importlib.util

    def main(script):
        spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "scripts" / script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.main

    cases = [
        ("train_posegen.py", "--data", tmp_path / "nothing", "--out", tmp_path / "a"),
        ("train_posegen.py", "--data", synthetic["dataset"], "--out", tmp_path / "b", "--window_s", 60.0),
        ("train_posegen.py", "--data", synthetic["dataset"], "--out", tmp_path / "c", "--mel_bands", 7),
        ("evaluate_posegen.py", "--ckpt", tmp_path / "missing.pt", "--data", synthetic["dataset"]),
    ]
    threads = torch.get_num_threads()  # the scripts set one thread for themselves
    for script, *args in cases:
        try:
            assert main(script)([str(a) for a in args]) == 1, args
        finally:
            torch.set_num_threads(threads)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
