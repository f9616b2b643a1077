"""speech.voices: enrolled voices, who speaks when in new audio, roles files."""

import json
import socket
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from common import dataset
from common.video_io import AUDIO_SR, fit_audio, read_audio, write_wav
from data_prep.synthetic import conversation_audio, plan_turns
from speech import voices
from speech.voices import Assignment, VoiceBank, VoiceError, assign, change_points, enroll, roles_from_json

FPS = 25.0
# A new conversation: person 0, then person 1 with no pause (one voiced run that must be split by voice),
# pauses, and a hand-over after a 0.25 s pause (shorter than MERGE_GAP_S: also one run).
NEW_PLAN = [(0, 0.4, 2.6), (1, 2.6, 4.9), (0, 5.6, 7.1), (1, 7.9, 9.95), (0, 10.2, 12.0)]
NEW_SECONDS = 12.5


def timeline(turns, n_frames, fps=FPS, n_persons=2):
    """[T, P] bool: frame i (time i / fps) belongs to the turn that holds it."""
    t = np.arange(n_frames) / fps
    speaking = np.zeros((n_frames, n_persons), bool)
    for person, start, end in turns:
        speaking[(t >= start) & (t < end), person] = True
    return speaking


def write_dataset(root, audio, speaking, fps=FPS):
    """The parts of a prepared dataset that enrollment reads: meta.json, audio.wav, audio_features.npz."""
    root.mkdir(parents=True)
    n_frames = speaking.shape[0]
    meta = {"schema_version": dataset.SCHEMA_VERSION, "fps": fps, "n_frames": n_frames,
            "persons": [{"id": p} for p in range(speaking.shape[1])]}
    (root / "meta.json").write_text(json.dumps(meta))
    write_wav(root / "audio.wav", fit_audio(audio, n_frames, fps))
    np.savez(root / "audio_features.npz", speaking=speaking)
    return root


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    """A bank enrolled from a 16 s synthetic two-person conversation (seed 0), and its dataset dir."""
    rng = np.random.default_rng(0)
    turns = plan_turns(16.0, rng)
    audio, _ = conversation_audio(turns, 16.0, rng)
    root = write_dataset(tmp_path_factory.mktemp("voices") / "talk", audio, timeline(turns, 400))
    return enroll([root]), root


@pytest.fixture(scope="module")
def new_conversation(enrolled):
    """The assignment of NEW_PLAN, voiced by a different seed, against the enrolled bank."""
    rng = np.random.default_rng(11)
    audio, _ = conversation_audio(NEW_PLAN, NEW_SECONDS, rng)
    n_frames = int(NEW_SECONDS * FPS)
    return assign(audio, n_frames, FPS, enrolled[0]), timeline(NEW_PLAN, n_frames)


def test_encoder_is_resemblyzers_network_and_front_end(monkeypatch):
    # resemblyzer's own package imports webrtcvad (which needs pkg_resources): stand it in to load the reference.
    monkeypatch.setitem(sys.modules, "webrtcvad", types.ModuleType("webrtcvad"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its scipy.ndimage.morphology import
            from resemblyzer import VoiceEncoder as Reference
    except ImportError as e:
        pytest.skip(f"resemblyzer's reference implementation does not import here: {e}")
    rng = np.random.default_rng(3)
    audio, _ = conversation_audio([(1, 0.1, 2.9)], 3.0, rng)
    audio = voices.normalize_volume(audio)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as ours runs: the reference's LSTM crawls with threads on a busy machine
    try:
        expected = Reference("cpu", verbose=False).embed_utterance(audio)
    finally:
        torch.set_num_threads(threads)
    ours = voices.embed_utterance(audio)
    assert ours.shape == (256,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_weights_load_from_the_wheel_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the voice encoder tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    voices.load_encoder.cache_clear()
    assert voices.weights_path().name == "pretrained.pt"
    assert not voices.load_encoder().training


def test_enrolled_synthetic_voices_are_told_apart(enrolled):
    bank, root = enrolled
    assert bank.names == [f"{root.name}:0", f"{root.name}:1"]
    assert bank.has_voice.all() and (bank.speech_s > 5.0).all()
    np.testing.assert_allclose(np.linalg.norm(bank.embeddings, axis=1), 1.0, atol=1e-5)
    # Each person's first and second half of speech agree better than either agrees with the other person.
    rng = np.random.default_rng(5)
    same = [voices.embed_utterance(conversation_audio([(p, 0.1, 2.6)], 2.7, rng)[0]) for p in (0, 1)]
    sims = np.stack(same) @ bank.embeddings.T
    assert sims[0, 0] > sims[0, 1] + 0.1 and sims[1, 1] > sims[1, 0] + 0.1


def test_new_conversation_goes_to_the_right_voices(new_conversation, enrolled):
    result, truth = new_conversation
    names = enrolled[0].names
    assert isinstance(result, Assignment) and result.persons == names
    assert result.speaking.shape == truth.shape and result.speaking.dtype == bool
    assert result.speaking.sum(1).max() <= 1
    talking = result.voiced & truth.any(1)
    accuracy = (result.speaking[talking] == truth[talking]).all(1).mean()
    assert talking.sum() > 200 and accuracy >= 0.9, accuracy
    # Five turns: the two back-to-back changes were found by voice, each turn went to its person.
    assert [t.person for t in result.turns] == [names[p] for p, _, _ in NEW_PLAN]
    for turn, (_, start, end) in zip(result.turns, NEW_PLAN):
        assert abs(turn.start / FPS - start) < 0.3 and abs(turn.end / FPS - end) < 0.3
    assert result.scores.shape == (5, 2)
    assert all(t.similarity == pytest.approx(result.scores[k, names.index(t.person)], abs=1e-6)
               for k, t in enumerate(result.turns))
    # Silence (outside every voiced run) is nobody's.
    assert not result.speaking[~truth.any(1) & ~result.voiced].any()


def test_a_change_of_voice_is_a_change_point_and_one_voice_stays_one_turn(enrolled):
    rng = np.random.default_rng(21)
    two, _ = conversation_audio([(1, 0.0, 2.5), (0, 2.5, 5.0)], 5.0, rng)
    points, candidates, similarity = change_points(two)
    assert candidates.shape == similarity.shape == (16,)  # every 0.2 s from 1 s to 4 s
    assert np.isclose(points / AUDIO_SR, 2.5, atol=0.3).any()
    assert abs(candidates[np.argmin(similarity)] / AUDIO_SR - 2.5) <= 0.3
    # Change points are generous candidates: within one voice they may split, and the pieces join again.
    one, _ = conversation_audio([(1, 0.5, 5.5)], 6.0, rng)
    result = assign(one, 150, FPS, enrolled[0])
    assert [t.person for t in result.turns] == [enrolled[0].names[1]]
    assert result.speaking[:, 1].sum() >= 0.95 * result.voiced.sum()


def test_silence_gives_nobody(enrolled):
    bank = enrolled[0]
    rng = np.random.default_rng(2)
    room = (0.0015 * rng.standard_normal(4 * AUDIO_SR)).astype(np.float32)
    for audio in (room, np.zeros(4 * AUDIO_SR, np.float32)):
        result = assign(audio, 100, FPS, bank)
        assert result.speaking.shape == (100, 2) and not result.speaking.any()
        assert result.turns == [] and result.scores.shape == (0, 2) and not result.voiced.any()


def test_chosen_persons_and_a_person_without_a_voice(enrolled, tmp_path):
    bank, root = enrolled
    # A second dataset whose person 1 says almost nothing: enrolled by name, without a voice.
    rng = np.random.default_rng(8)
    turns = [(0, 0.3, 3.0), (1, 3.5, 4.3)]
    audio, _ = conversation_audio(turns, 5.0, rng)
    quiet = enroll([write_dataset(tmp_path / "quiet", audio, timeline(turns, 125))])
    assert quiet.names == ["quiet:0", "quiet:1"] and quiet.has_voice.tolist() == [True, False]
    assert quiet.speech_s[1] == pytest.approx(0.8, abs=0.05) and not quiet.embeddings[1].any()

    both = enroll([root, tmp_path / "quiet"])
    rng = np.random.default_rng(9)
    plan = [(1, 0.3, 2.5), (0, 3.2, 5.5)]
    new, _ = conversation_audio(plan, 6.0, rng)
    chosen = [f"{root.name}:1", "quiet:1", f"{root.name}:0"]
    result = assign(new, 150, FPS, both, persons=chosen)
    assert result.persons == chosen and result.speaking.shape == (150, 3)
    assert not result.speaking[:, 1].any() and np.isnan(result.scores[:, 1]).all()
    assert [t.person for t in result.turns] == [chosen[0], chosen[2]]
    with pytest.raises(VoiceError, match="has an enrolled voice"):
        assign(new, 150, FPS, both, persons=["quiet:1"])
    with pytest.raises(VoiceError, match="not an enrolled person"):
        assign(new, 150, FPS, both, persons=["nobody:0"])


def test_bank_round_trips_through_dict_json_and_npz(enrolled, tmp_path):
    bank = enrolled[0]
    d = bank.to_dict()
    assert json.loads(json.dumps(d)) == d
    for again in (VoiceBank.from_dict(d), *(VoiceBank.load(bank.save(tmp_path / f"bank.{s}")) for s in ("json", "npz"))):
        assert again.names == bank.names and again.encoder == bank.encoder
        np.testing.assert_allclose(again.embeddings, bank.embeddings, atol=1e-6)
        assert again.has_voice.tolist() == bank.has_voice.tolist()
    with pytest.raises(VoiceError, match="enroll the datasets again"):
        VoiceBank.from_dict({**d, "encoder": "mfcc-stats"})
    with pytest.raises(VoiceError, match="needs the keys"):
        VoiceBank.from_dict({"names": []})
    with pytest.raises(VoiceError, match="twice"):
        enroll([enrolled[1], enrolled[1]])


def test_real_voices_of_a_man_and_a_woman_are_told_apart(dev_dir, tmp_path):
    # talk_map_844: a man, speech at 0.24-2.4, 2.64-4.08, 4.36-5.0 s; talk_expressive_480: a woman, 1.6-2.88 and
    # 3.48-4.76 s (silero). Enroll each from its first stretch, then assign their other stretches, joined by silence.
    man, woman = (read_audio(dev_dir / name) for name in ("talk_map_844.mp4", "talk_expressive_480.mp4"))
    spans = {"man": (0.24, 2.4), "woman": (1.6, 2.88)}
    roots = []
    for name, audio in (("man", man), ("woman", woman)):
        n_frames = int(len(audio) / AUDIO_SR * FPS)
        roots.append(write_dataset(tmp_path / name, audio, timeline([(0, *spans[name])], n_frames, n_persons=1)))
    bank = enroll(roots, min_voice_s=1.0)
    assert bank.names == ["man:0", "woman:0"] and bank.has_voice.all()
    gap = np.zeros(int(0.6 * AUDIO_SR), np.float32)
    cut = lambda a, s, e: a[int(s * AUDIO_SR):int(e * AUDIO_SR)]  # noqa: E731
    parts = [gap, cut(man, 2.64, 5.0), gap, cut(woman, 3.48, 4.76), gap]
    audio = np.concatenate(parts)
    n_frames = int(len(audio) / AUDIO_SR * FPS)
    result = assign(audio, n_frames, FPS, bank)
    ends = np.cumsum([len(p) for p in parts]) / AUDIO_SR
    truth = timeline([(0, ends[0], ends[1]), (1, ends[2], ends[3])], n_frames)
    talking = result.voiced & truth.any(1)
    assert (result.speaking[talking] == truth[talking]).all(1).mean() >= 0.9
    assert {t.person for t in result.turns} == {"man:0", "woman:0"}


def test_enroll_a_prepared_dataset_and_assign_its_voices(synthetic):
    bank = enroll([synthetic["dataset"]])
    name = synthetic["dataset"].name
    assert bank.names == [f"{name}:0", f"{name}:1"] and bank.has_voice.all()
    rng = np.random.default_rng(31)
    audio, _ = conversation_audio(NEW_PLAN, NEW_SECONDS, rng)
    n_frames = int(NEW_SECONDS * FPS)
    result = assign(audio, n_frames, FPS, bank)
    truth = timeline(NEW_PLAN, n_frames)
    talking = result.voiced & truth.any(1)
    assert (result.speaking[talking] == truth[talking]).all(1).mean() >= 0.85


# ----- roles files -----

PERSONS = ["talk:0", "talk:1", "other:0"]


def write_roles(tmp_path, roles):
    path = tmp_path / "roles.json"
    path.write_text(roles if isinstance(roles, str) else json.dumps(roles))
    return path


def test_roles_by_name_and_index(tmp_path):
    path = write_roles(tmp_path, [{"person": "talk:1", "start": 1.0, "end": 2.0},
                                  {"person": 0, "start": 0.0, "end": 1.0},
                                  {"person": "2", "start": 2.5, "end": 99}])
    speaking = roles_from_json(path, PERSONS, 100, FPS)
    assert speaking.shape == (100, 3) and speaking.dtype == bool
    expected = timeline([(1, 1.0, 2.0), (0, 0.0, 1.0), (2, 2.5, 4.0)], 100, n_persons=3)
    np.testing.assert_array_equal(speaking, expected)
    assert speaking[:25, 0].all() and speaking[25:50, 1].all() and not speaking[50:63].any() and speaking[63:, 2].all()
    assert roles_from_json(write_roles(tmp_path, []), PERSONS, 10, FPS).shape == (10, 3)


def test_roles_from_a_compose_turns_json(tmp_path):
    turns = {"fps": FPS, "turns": [{"person": 1, "start_s": 0.0, "end_s": 1.0, "start_frame": 0, "end_frame": 25},
                                   {"person": 0, "start_s": 1.4, "end_s": 2.0, "start_frame": 35, "end_frame": 50}]}
    speaking = roles_from_json(write_roles(tmp_path, turns), PERSONS[:2], 60, FPS)
    np.testing.assert_array_equal(speaking, timeline([(1, 0.0, 1.0), (0, 1.4, 2.0)], 60, n_persons=2))


@pytest.mark.parametrize("roles, message", [
    ('[{"person": 0, "start": 0, "end": 1}', "not valid JSON"),
    ({"person": 0, "start": 0, "end": 1}, "JSON list"),
    (["talk:0"], "expected an object"),
    ([{"person": "talk:9", "start": 0, "end": 1}], "unknown person 'talk:9'"),
    ([{"person": 3, "start": 0, "end": 1}], "out of range"),
    ([{"person": True, "start": 0, "end": 1}], "name or an index"),
    ([{"person": 0, "start": -0.5, "end": 1}], "negative"),
    ([{"person": 0, "start": 2, "end": 1}], "not after start"),
    ([{"person": 0, "start": 1, "end": 1}], "not after start"),
    ([{"person": 0, "start": "0", "end": 1}], "finite number"),
    ([{"person": 0, "start": 0, "end": float("nan")}], "finite number"),
    ([{"person": 0, "start": 0}], "missing \\['end'\\]"),
    ([{"person": 0, "start": 0, "stop": 1}], "unknown keys \\['stop'\\]"),
    ([{"person": 0, "start": 0, "end": 2}, {"person": 1, "start": 1.5, "end": 3}], "entries 0 and 1 overlap"),
    ([{"person": 0, "start": 0, "end": 2}, {"person": 0, "start": 1, "end": 3}], "overlap"),
    ([{"person": 0, "start": 5, "end": 6}], "after the audio ends"),
])
def test_bad_roles_are_refused_with_a_reason(tmp_path, roles, message):
    with pytest.raises(VoiceError, match=message):
        roles_from_json(write_roles(tmp_path, roles), PERSONS, 100, FPS)


def test_missing_roles_file(tmp_path):
    with pytest.raises(VoiceError, match="cannot read the roles file"):
        roles_from_json(tmp_path / "absent.json", PERSONS, 100, FPS)
