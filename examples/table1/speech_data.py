"""Synthetic English speech with espeak-ng: voices, sentences and rendering.

Every function is deterministic given its arguments (seeds are explicit).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from audio import SR, run_bytes

# English accents espeak-ng ships (`espeak-ng --voices=en`, gmw/ voices).
LANGS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

_DETERMINERS = "the a this that every some one my your our their his her no each".split()
_ADJECTIVES = (
    "red blue green old new small big quiet loud happy sad bright dark cold warm soft hard "
    "quick slow tall short heavy light young clever busy empty full strange simple early late "
    "gentle brave lazy proud rough smooth sharp sweet bitter wooden silver golden broken hidden"
).split()
_NOUNS = (
    "dog cat house river garden teacher doctor window table letter train city mountain "
    "forest child farmer painter kitchen bottle story market island engine pocket basket "
    "bridge candle doorway camera pencil ticket blanket village harbor lantern meadow "
    "student captain sister brother neighbour machine picture station valley kettle "
    "orchard tower ladder wagon carpet mirror shadow button whistle feather"
).split()
_VERBS = (
    "found saw carried painted opened closed watched followed pushed pulled bought sold "
    "cleaned moved lifted dropped visited remembered described repaired borrowed noticed "
    "covered counted wrapped measured checked packed ordered kicked chased greeted"
).split()
_PREPOSITIONS = "near under behind beside inside across above below beyond around through".split()
_ADVERBS = "slowly quickly quietly carefully happily suddenly yesterday today again often".split()
_SUBJECTS = "I you we they she he".split()
_NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: accent (language), variant, pitch (0-99) and speed (words/min)."""

    lang: str
    variant: str
    pitch: int = 50
    speed: int = 170

    @property
    def name(self) -> str:
        return f"{self.lang}+{self.variant}"

    def jitter(self, rng: np.random.Generator, pitch: int, speed: int) -> Voice:
        """The same voice with pitch and speed moved by up to +-`pitch` / +-`speed`."""
        return Voice(
            self.lang,
            self.variant,
            int(np.clip(self.pitch + rng.integers(-pitch, pitch + 1), 0, 99)),
            int(np.clip(self.speed + rng.integers(-speed, speed + 1), 80, 400)),
        )


def espeak_data_dir() -> Path:
    """Directory of espeak-ng's data files (variants live under voices/!v)."""
    for cand in (
        os.environ.get("ESPEAK_DATA_PATH", ""),
        "/usr/lib/x86_64-linux-gnu/espeak-ng-data",
        "/usr/lib/aarch64-linux-gnu/espeak-ng-data",
        "/usr/share/espeak-ng-data",
    ):
        if cand and (Path(cand) / "voices" / "!v").is_dir():
            return Path(cand)
    sys.exit("espeak-ng data not found: apt-get install -y espeak-ng")


def variants() -> list[str]:
    """All espeak-ng voice variants, sorted (about 100 on Debian 12)."""
    return sorted(p.name for p in (espeak_data_dir() / "voices" / "!v").iterdir() if p.is_file())


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Render `text` with espeak-ng and return float32 audio at 16 kHz."""
    raw = run_bytes(
        [
            "espeak-ng",
            "-v",
            voice.name,
            "-p",
            str(voice.pitch),
            "-s",
            str(voice.speed),
            "--stdout",
            text,
        ]
    )
    # espeak-ng streams a WAV whose size fields are bogus: read the 44-byte header by hand.
    sr = int.from_bytes(raw[24:28], "little")
    pcm = np.frombuffer(raw[44 : 44 + (len(raw) - 44) // 2 * 2], dtype="<i2")
    wav = pcm.astype(np.float32) / 32768.0
    return soxr.resample(wav, sr, SR, quality="HQ").astype(np.float32)


def sentence(rng: np.random.Generator) -> str:
    """One random English sentence from small word lists (a handful of templates)."""

    def pick(words: list[str]) -> str:
        return words[rng.integers(len(words))]

    def noun_phrase() -> str:
        adj = f" {pick(_ADJECTIVES)}" if rng.random() < 0.6 else ""
        return f"{pick(_DETERMINERS)}{adj} {pick(_NOUNS)}"

    kind = rng.integers(5)
    if kind == 0:
        s = f"{noun_phrase()} {pick(_VERBS)} {noun_phrase()} {pick(_PREPOSITIONS)} {noun_phrase()}"
    elif kind == 1:
        s = f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_NUMBERS)} {pick(_NOUNS)}s {pick(_ADVERBS)}"
    elif kind == 2:
        s = f"did {noun_phrase()} see {noun_phrase()} {pick(_PREPOSITIONS)} {noun_phrase()}?"
    elif kind == 3:
        s = f"{noun_phrase()} was {pick(_ADJECTIVES)} and {pick(_ADJECTIVES)} {pick(_ADVERBS)}"
    else:
        s = f"{pick(_SUBJECTS)} {pick(_ADVERBS)} {pick(_VERBS)} {noun_phrase()}"
    return s[0].upper() + s[1:] + ("" if s.endswith("?") else ".")


def sentences(seed: int, n: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """`n` distinct sentences from `seed`, none of them in `exclude`."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        s = sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
