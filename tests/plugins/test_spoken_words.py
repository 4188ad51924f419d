"""The spoken-words task: captions and splits, espeak-ng synthesis and its cache, the shipped classifier, and a
tiny teacher + student fit through the real CLI on a handful of synthesised clips."""

import json
from pathlib import Path

import pytest
import torch

from tasks.spoken_words import captions
from tasks.spoken_words.captions import HELD_OUT_COMBOS, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, draw_spec
from tasks.spoken_words.corpus import load_corpus
from tasks.spoken_words.espeak import INSTALL_COMMAND, espeak_binary

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "tasks" / "spoken_words" / "weights"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_validation_captions_are_never_seen_in_training():
    train = [draw_spec("train", i) for i in range(3000)]
    val = [draw_spec("val", 10**9 + i) for i in range(600)]
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    assert not {(s.word, s.voice) for s in train} & HELD_OUT_COMBOS  # held-out (word, voice) pairs stay out
    assert {(s.word, s.voice) for s in val} & HELD_OUT_COMBOS
    assert not {s.caption for s in train} & {s.caption for s in val}
    assert len(HELD_OUT_COMBOS) == 20 and {w for w, _ in HELD_OUT_COMBOS} == set(range(20))


def test_a_caption_says_the_word_the_voice_and_the_speed():
    spec = captions.ClipSpec(word=14, accent=2, variant=8, speed=2, wpm=250, pitch=50, template=0,
                             held_out_template=False)
    assert spec.caption == "a woman with a Scottish accent quickly says left"
    assert spec.labels() == {"word": 14, "gender": 1, "accent": 2, "speed": 2}
    plain = captions.ClipSpec(14, 0, 0, 1, 175, 50, 1, True)
    assert plain.caption == "a recording of a man with an American accent saying left"


def test_a_missing_espeak_ng_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"espeak-ng is not installed.*`{INSTALL_COMMAND}`"):
        espeak_binary()


def test_corpora_are_cached_with_a_manifest_and_served_to_smaller_sizes(tmp_path):
    first = load_corpus("val", 6, cache_dir=tmp_path)
    (manifest,) = tmp_path.glob("val_*.json")
    info = json.loads(manifest.read_text())
    assert info["size"] == 6 and info["settings"]["espeak"].startswith("eSpeak NG")
    assert first.audio.shape == (6, 16128) and first.audio.abs().max() <= 1
    assert bool((first.lengths > 1600).all()) and bool((first.lengths <= 16128).all())  # speech of 0.1-1 s
    again = load_corpus("val", 4, cache_dir=tmp_path)  # read back, not synthesised
    assert torch.equal(again.audio, first.audio[:4]) and again.specs == first.specs[:4]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    other = load_corpus("val", 2, seed=1, cache_dir=tmp_path)  # another setting: another entry
    assert not torch.equal(other.audio, first.audio[:2])


def test_the_shipped_classifier_reads_real_clips_and_its_features_are_deterministic():
    from tasks.spoken_words.evaluation import SpokenWordsEvaluator

    card = json.loads((WEIGHTS / "classifier.json").read_text())
    assert card["held_out_validation"]["word_accuracy"] > 0.9
    ev = SpokenWordsEvaluator()
    corpus = load_corpus("val", 16)
    log_mel = ev.mel.log_mel(corpus.audio)
    a, b = ev.net(log_mel), ev.net(log_mel)
    assert torch.equal(a, b) and a.shape == (16, ev.net.num_features)
    assert torch.allclose(ev.net(log_mel[3:4]), a[3:4], atol=1e-5)  # a clip's features do not depend on its batch
    labels = {k: torch.tensor([s.labels()[k] for s in corpus.specs]) for k in ("word", "gender", "accent", "speed")}
    m = ev.metrics(log_mel, labels, log_mel)
    assert m["word_accuracy"] > 0.8 and abs(m["fd_spoken_words"]) < 1e-3 and m["duration_error_s"] == 0.0


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A teacher trained for a few steps on 8 synthesised clips, exported, then distilled for a few steps."""
    from unidistill.cli import main

    root = tmp_path_factory.mktemp("spoken")
    common = [
        "--model.modality.init_args.network={patch: 2, width: 32, layers: 2, heads: 2, kv_heads: 1, cross_dim: 32, "
        "time_dim: 32}",
        "--data.init_args.train_size=8", "--data.init_args.val_size=4", "--data.init_args.batch_size=4",
        f"--data.init_args.cache_dir={root / 'cache'}", "--trainer.enable_progress_bar=false",
        "--model.val_nfes=[2]", "--trainer.limit_val_batches=1",
    ]
    main(["fit", "--config", "configs/spoken_words/teacher.yaml", *common, "--trainer.max_steps=3",
          f"--trainer.default_root_dir={root / 'teacher'}", "--trainer.val_check_interval=3"])
    main(["export", "--config", str(root / "teacher" / "config.yaml"), "--ckpt",
          str(root / "teacher" / "checkpoints" / "last.ckpt"), "--out", str(root / "export")])
    teacher = root / "export" / "student.safetensors"
    main(["fit", "--config", "configs/spoken_words/consistency.yaml", *common, "--trainer.max_steps=2",
          f"--model.modality.init_args.teacher={teacher}", f"--trainer.default_root_dir={root / 'student'}",
          "--trainer.val_check_interval=2", "--model.objective.init_args.num_intervals=4"])
    return root


def test_a_tiny_teacher_and_student_fit_on_a_handful_of_clips(tiny_runs):
    card = json.loads((tiny_runs / "export" / "student.json").read_text())
    assert card["modality"] == "audio" and card["latent"]["class"] == "MelLatent"
    assert card["latent"]["n_mels"] == 64 and card["prediction"] == "x0"
    assert (tiny_runs / "student" / "checkpoints" / "last.ckpt").is_file()
    samples = list((tiny_runs / "student").rglob("samples/*/student_nfe2/*.wav"))
    assert len(samples) == 4  # the validation wrote one WAV per clip, and a spectrogram PNG
    assert list((tiny_runs / "student").rglob("samples/*/student_nfe2/spectrograms.png"))
