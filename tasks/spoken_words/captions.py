"""What a spoken-words clip is: a word, a voice (accent x gender variant), a speed and a pitch, and its caption.

Vocabulary: the ten digits and ten command words. Voices: five espeak-ng accents times twelve voice variants
(``m1``-``m7`` male, ``f1``-``f5`` female); a caption names the accent and the gender ("a woman with a Scottish
accent quickly says left"), so a *voice* in the task's sense is the pair (accent, gender): ten voices. Speed has
three classes (``slowly``, unmarked, ``quickly``) with a little jitter inside each; pitch is a nuisance drawn
uniformly and never captioned.

Prompt following is measured on captions never seen in training: validation captions come from held-out
templates, and 20 of the 200 (word, voice) combinations occur only in validation (``HELD_OUT_COMBOS``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
#: espeak-ng voice name -> the accent as captions name it
ACCENTS = {"en-us": "American", "en-gb": "British", "en-gb-scotland": "Scottish", "en-gb-x-rp": "posh English",
           "en-029": "Caribbean"}
ACCENT_VOICES = tuple(ACCENTS)
#: espeak-ng voice variants and their gender (0 = man, 1 = woman)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
GENDERS = ("man", "woman")
SPEEDS = ("slowly", "", "quickly")
#: words per minute (espeak-ng ``-s``) of each speed class, and the jitter drawn inside a class
SPEED_WPM = (115, 175, 250)
WPM_JITTER = 10
PITCH_RANGE = (25, 75)

TRAIN_TEMPLATES = (
    "a {gender} with {a_accent} accent {speed_pre}says {word}",
    "{a_accent} {gender} saying {word}{speed_post}",
    "the word {word} spoken {speed_pre}by a {gender} with {a_accent} accent",
    "{word}, said {speed_pre}in {a_accent} accent by a {gender}",
    "{a_accent}-accented {gender} {speed_pre}says the word {word}",
)
HELD_OUT_TEMPLATES = (
    "{a_accent} {gender} {speed_pre}pronounces the word {word}",
    "a recording of a {gender} with {a_accent} accent saying {word}{speed_post}",
)


def gender_of(variant: int) -> int:
    return int(VARIANTS[variant].startswith("f"))


def voice_index(accent: int, gender: int) -> int:
    """The (accent, gender) voice as one index in ``0 .. 2 * len(ACCENTS) - 1``."""
    return accent * len(GENDERS) + gender


#: (word, voice) pairs that appear only in validation: every word once, every voice twice
HELD_OUT_COMBOS = frozenset((w, (3 * w + w // 10) % (2 * len(ACCENTS))) for w in range(len(WORDS)))


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def caption(word: int, accent: int, gender: int, speed: int, template: str) -> str:
    name = ACCENTS[ACCENT_VOICES[accent]]
    adverb = SPEEDS[speed]
    text = template.format(word=WORDS[word], gender=GENDERS[gender], a_accent=_article(name),
                           speed_pre=f"{adverb} " if adverb else "", speed_post=f" {adverb}" if adverb else "")
    return text[0].lower() + text[1:]


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip (its espeak-ng settings) and its caption."""

    word: int
    accent: int
    variant: int
    speed: int
    wpm: int
    pitch: int
    template: int
    held_out_template: bool

    @property
    def gender(self) -> int:
        return gender_of(self.variant)

    @property
    def voice(self) -> int:
        return voice_index(self.accent, self.gender)

    @property
    def caption(self) -> str:
        templates = HELD_OUT_TEMPLATES if self.held_out_template else TRAIN_TEMPLATES
        return caption(self.word, self.accent, self.gender, self.speed, templates[self.template])

    def labels(self) -> dict[str, int]:
        return {"word": self.word, "gender": self.gender, "accent": self.accent, "speed": self.speed}

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


#: which (word, voice) combinations and templates each split draws from
SPLITS = {"train": ("seen", False), "val": ("all", True), "classifier": ("all", False)}


def draw_spec(split: str, seed: int) -> ClipSpec:
    """The clip of ``split`` drawn from ``seed`` alone (so any clip can be regenerated exactly)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    combos, held_out_template = SPLITS[split]
    rng = np.random.default_rng(seed)
    while True:
        word, accent = int(rng.integers(len(WORDS))), int(rng.integers(len(ACCENTS)))
        variant = int(rng.integers(len(VARIANTS)))
        seen = (word, voice_index(accent, gender_of(variant))) not in HELD_OUT_COMBOS
        if combos == "all" or seen:
            break
    speed = int(rng.integers(len(SPEEDS)))
    wpm = SPEED_WPM[speed] + int(rng.integers(-WPM_JITTER, WPM_JITTER + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    templates = HELD_OUT_TEMPLATES if held_out_template else TRAIN_TEMPLATES
    return ClipSpec(word, accent, variant, speed, wpm, pitch, int(rng.integers(len(templates))), held_out_template)
