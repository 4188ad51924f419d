"""Spoken words: captioned command words and digits from espeak-ng voices (text-to-speech on 1 s windows)."""
