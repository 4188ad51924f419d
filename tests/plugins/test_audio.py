"""The audio plugin: latents (log-mel, waveform) round trips, WAV files, the SpeechDiT network and its guidance
input, weights cards, bad input, and the audio row of the regression matrix."""

import json
import math

import pytest
import torch

from modalities.audio import AudioModality, MelLatent, SpeechDiT, WaveformLatent, read_wav, write_wav
from unidistill.regress import build_matrix, run_fast_cell

pytestmark = pytest.mark.usefixtures("one_thread")


def chirp(n: int = 3, samples: int = 16128, rate: int = 16000) -> torch.Tensor:
    """Harmonic tones with a gliding pitch and a silent tail: speech-like spectra without espeak-ng."""
    grid = torch.arange(samples) / rate
    out = []
    for i in range(n):
        f0 = 120 + 60 * i + 80 * grid
        phase = 2 * math.pi * torch.cumsum(f0, 0) / rate
        wave = sum(torch.sin(k * phase) / k for k in range(1, 6)) * 0.2
        out.append(wave * (grid < 0.6) * (grid > 0.05))
    return torch.stack(out)


def test_normalisation_is_an_exact_inverse_and_decode_round_trips_the_log_mel():
    mel = MelLatent()
    wave = chirp()
    log_mel = mel.log_mel(wave)
    assert log_mel.shape == (3, 64, 64) and mel.samples == 16128
    assert torch.allclose(mel.denormalise(mel.normalise(log_mel)), log_mel, atol=1e-5)
    again = mel.log_mel(mel.decode(mel.encode(wave)))  # Griffin-Lim: the lossy direction
    loud, quiet = log_mel > math.log(1e-2), log_mel < math.log(1e-4)
    assert (again - log_mel)[loud].abs().mean() < 0.25  # natural-log units (measured 0.17): phases re-estimated
    assert (again - log_mel).abs().median() < 0.01
    assert (again[quiet] > math.log(1e-2)).float().mean() < 0.01  # silence stays silent
    assert torch.equal(mel.decode(mel.encode(wave)), mel.decode(mel.encode(wave)))  # zero-phase start: repeatable


def test_waveform_latent_is_exact_both_ways():
    lat = WaveformLatent()
    wave = chirp()
    z = lat.encode(wave)
    assert z.shape == (3, 256, 63) and torch.equal(lat.decode(z), wave)
    assert 0.5 < float(z[:, :, 2:30].std()) < 3  # scaled to about unit variance where there is sound


def test_wav_round_trip_is_exact_to_16_bit_quantisation(tmp_path):
    wave = chirp(1)[0]
    path = write_wav(tmp_path / "a.wav", wave, 16000)
    back, rate = read_wav(path, 16000)
    assert rate == 16000 and back.shape == wave.shape
    assert (back - wave).abs().max() <= 1 / 32767 + 1e-6
    with pytest.raises(ValueError, match="sampled at 16000 Hz.*expects 22050 Hz.*resample"):
        read_wav(path, 22050)


def test_a_clip_longer_than_the_window_is_refused_unless_trim_is_asked(caplog):
    long = torch.zeros(1, 20000)
    with pytest.raises(ValueError, match=r"20000 samples \(1.250 s\) is longer than the latent window of 16128"):
        MelLatent().fit_window(long)
    with caplog.at_level("WARNING"):
        cut = MelLatent(overlong="trim").fit_window(long)
    assert cut.shape == (1, 16128) and "cut to the 1.008 s latent window" in caplog.text
    assert MelLatent().fit_window(torch.ones(2, 100)).shape == (2, 16128)  # shorter: zero padded
    with pytest.raises(ValueError, match="overlong='drop'; valid: error, trim"):
        MelLatent(overlong="drop")


def test_mel_statistics_of_another_configuration_are_refused(tmp_path):
    from modalities.audio import compute_stats

    path = compute_stats(MelLatent(), chirp(), tmp_path / "stats.json")
    assert MelLatent(stats=str(path)).mean.shape == (64,)
    with pytest.raises(ValueError, match="computed for mel settings .*'n_mels': 64.* this latent uses .*'n_mels': 32"):
        MelLatent(n_mels=32, stats=str(path))


def test_speech_dit_patching_round_trips_and_the_guidance_input_starts_at_zero():
    net = SpeechDiT(16, 16, text_dim=16, patch=2, width=32, layers=2, heads=2, kv_heads=1, cross_dim=32, time_dim=32)
    x = torch.randn(3, 16, 16)
    assert torch.equal(net.untokens(net.tokens(x)), x)
    assert torch.equal(net.tokens(x)[:, 1::2, 0], x[:, :, 1])  # token 0 holds frames 0 and 1 of every channel
    t, emb, pooled = torch.rand(3), torch.randn(3, 4, 16), torch.randn(3, 16)
    with torch.no_grad():
        before = net(x, t, emb, pooled)
        net.enable_guidance_conditioning()
        after = net(x, t, emb, pooled, guidance=torch.tensor([1.0, 3.0, 7.0]))
    assert torch.equal(before, after)
    assert not any("time_proj" in n for n, _ in net.named_parameters())  # Fourier frequencies stay fixed


def test_student_of_a_tiny_teacher_equals_it_and_exports_a_card_that_reloads(tmp_path):
    m = AudioModality.tiny()
    teacher = m.load_teacher()
    student = m.build_student(teacher, guidance_conditioned=True)
    batch = m.example_batch(2, torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.4)
    with torch.no_grad():
        assert torch.allclose(student(batch.x0, t, batch.cond, torch.tensor([2.0, 5.0])).x0,
                              teacher(batch.x0, t, batch.cond).x0, atol=1e-6)
    weights, card = m.export(student, tmp_path)
    info = json.loads(card.read_text())
    assert info["latent"]["class"] == "MelLatent" and info["guidance_input"] is True
    again = m.load_student(weights)
    with torch.no_grad():
        assert torch.equal(again(batch.x0, t, batch.cond, torch.tensor([2.0, 5.0])).x0,
                           student(batch.x0, t, batch.cond, torch.tensor([2.0, 5.0])).x0)


def test_a_guidance_conditioned_student_init_keeps_its_guidance_input(tmp_path):
    """Post-training (e.g. adversarial) starts from an exported w-conditioned student and samples it at
    ``student_guidance`` when no scale is passed."""
    m = AudioModality.tiny()
    teacher = m.load_teacher()
    first = m.build_student(teacher, guidance_conditioned=True)
    with torch.no_grad():
        for p in first.network.guidance.parameters():
            p.add_(0.1)  # as if trained: the guidance input now matters
    weights, _ = m.export(first, tmp_path)
    post = AudioModality(latent=m.latent, network=m.net_args, text_encoder=None, text_dim=16,
                         student_init=str(weights), student_guidance=2.5)
    student = post.build_student(teacher)
    batch = m.example_batch(2, torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.7)
    with torch.no_grad():
        guided = first(batch.x0, t, batch.cond, torch.full((2,), 2.5)).x0
        assert torch.equal(student(batch.x0, t, batch.cond).x0, guided)
    with pytest.raises(ValueError, match="takes a guidance scale and none was given"):
        first(batch.x0, t, batch.cond)
    # a guidance scale for a student that takes none would be silently ignored: refused instead
    plain = AudioModality(latent=m.latent, network=m.net_args, text_encoder=None, text_dim=16, student_guidance=2.0)
    with pytest.raises(ValueError, match="student_guidance=2.0 is only used by a guidance-conditioned"):
        plain.build_student(teacher)


def test_a_teacher_trained_for_another_mel_configuration_is_refused(tmp_path):
    m = AudioModality.tiny()
    weights, _ = m.export(m.load_teacher(), tmp_path)
    other = AudioModality(latent=MelLatent(n_fft=128, hop_length=64, n_mels=16, frames=16, log_floor=1e-4),
                          network=m.net_args, text_encoder=None, text_dim=16, teacher=str(weights))
    with pytest.raises(ValueError, match="trained for another setting.*latent.*log_floor"):
        other.load_teacher()
    same = AudioModality(latent=MelLatent(n_fft=128, hop_length=64, n_mels=16, frames=16), network=m.net_args,
                         text_encoder=None, text_dim=16, teacher=str(weights))
    assert same.load_teacher() is not None


def test_bad_batches_name_what_is_wrong():
    m = AudioModality.tiny()
    with pytest.raises(ValueError, match="audio at 22050 Hz; the MelLatent expects 16000 Hz"):
        m.to_batch({"audio": torch.zeros(1, 100), "prompt": ["a man says go"], "sample_rate": 22050})
    with pytest.raises(TypeError, match="audio batches are dicts"):
        m.to_batch(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        AudioModality().prompt_condition(["a man says go", "  "])
    with pytest.raises(ValueError, match="unknown network option.*'depth'"):
        AudioModality(network={"depth": 3})
    with pytest.raises(ValueError, match="teacher='weights.pt'"):
        AudioModality(teacher="weights.pt")


def test_text_conditions_carry_token_states_and_the_pooled_sentence_embedding():
    m = AudioModality()
    cond = m.prompt_condition(["a woman quickly says left", "a man says go"], {"word": torch.tensor([14, 19])})
    assert cond["emb"].shape == (2, 24, 384) and cond["pooled"].shape == (2, 384)
    assert torch.allclose(cond["pooled"].norm(dim=1), torch.ones(2))
    null = m.null_condition(cond)
    assert torch.equal(null["labels"]["word"], torch.tensor([-1, -1]))
    assert torch.equal(null["emb"][0], null["emb"][1]) and not torch.equal(null["emb"][0], cond["emb"][0])
    assert m.prompt_text(cond["prompt_id"]) == ["a woman quickly says left", "a man says go"]


def test_samples_are_written_as_wavs_and_one_spectrogram_png(tmp_path):
    m = AudioModality.tiny()
    batch = m.example_batch(3, torch.Generator().manual_seed(1))
    files = m.save_comparison({"teacher": batch.x0, "student 1 NFE": batch.x0 * 0.5}, batch.cond, tmp_path)
    wavs = [f for f in files if f.suffix == ".wav"]
    assert len(wavs) == 6 and [f for f in files if f.suffix == ".png"] == [tmp_path / "comparison.png"]
    back, rate = read_wav(wavs[0], 16000)
    assert back.shape == (m.latent.samples,) and rate == 16000


def test_tiny_waveform_variant_trains_through_the_real_module():
    """A second latent choice comes from the plugin alone: a raw-waveform DiT runs a real objective step."""
    from unidistill.objectives import ConsistencyDistillation
    from unidistill.regress.matrix import Cell

    def make():
        m = AudioModality(latent=WaveformLatent(frame=64, frames=16), network=AudioModality.tiny().net_args,
                          text_encoder=None, text_dim=16)
        return m, ConsistencyDistillation(num_intervals=4, guidance_range=(1.0, 3.0))

    out = run_fast_cell(Cell("audio", "waveform", "ready", make=make), iterations=2, batch_size=2)
    assert out["leaks"] == []


CELLS = build_matrix(["audio"])


@pytest.mark.parametrize("cell", [c for c in CELLS if c.status == "ready"], ids=lambda c: c.id)
def test_audio_row_of_the_regression_matrix(cell):
    out = run_fast_cell(cell, iterations=2, batch_size=2)
    assert out["leaks"] == []


def test_every_audio_cell_runs_or_says_why_not():
    assert {c.status for c in CELLS} <= {"ready", "unsupported"}
    assert all("causal" in c.reason for c in CELLS if c.status == "unsupported")
    assert len([c for c in CELLS if c.status == "ready"]) >= 12
