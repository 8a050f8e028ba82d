"""Synthetic music as MIDI: single notes, generic random pieces and eight styles ("genres").

Every generator is deterministic given its seed; `midi.render` turns the result into audio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from midi import DRUMS, Note

Piece = tuple[list[Note], dict[int, int], float]  # notes, program per channel, tempo (bpm)

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
DORIAN = (0, 2, 3, 5, 7, 9, 10)
MIXOLYDIAN = (0, 2, 4, 5, 7, 9, 10)
BLUES = (0, 3, 5, 6, 7, 10)
PENTATONIC = (0, 2, 4, 7, 9)

KICK, SNARE, CLAP, HAT, OPEN_HAT, RIDE, CRASH, RIM, SHAKER, CLAVE, TOM = (
    36,
    38,
    39,
    42,
    46,
    51,
    49,
    37,
    70,
    75,
    45,
)

# Lead instruments shared by all styles, so that the lead's timbre does not give the style away.
LEAD_POOL = (0, 11, 16, 24, 40, 56, 65, 68, 71, 73, 80, 81)

# Melodic GM programs used for generic pieces: 0-103 without percussive effects.
GENERIC_PROGRAMS = tuple(range(0, 104))


def degree_pitch(scale: tuple[int, ...], root: int, degree: int) -> int:
    """MIDI pitch of a scale degree (degree may exceed the scale length: next octaves)."""
    octave, idx = divmod(degree, len(scale))
    return root + 12 * octave + scale[idx]


def triad(scale: tuple[int, ...], root: int, degree: int, seventh: bool = False) -> list[int]:
    """Stacked thirds on a scale degree."""
    steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
    return [degree_pitch(scale, root, degree + s) for s in steps]


@dataclass(frozen=True)
class Style:
    """Parameters of a generated music style; `make` builds one piece of it."""

    name: str
    tempo: tuple[int, int]
    beats_per_bar: int
    scales: tuple[tuple[int, ...], ...]
    progressions: tuple[tuple[int, ...], ...]
    chord_programs: tuple[int, ...]
    bass_programs: tuple[int, ...]
    lead_programs: tuple[int, ...]
    comp: str  # block | arpeggio | offbeat | oompah | strum | power | pad
    drums: str  # none | rock | swing | four | clave | oneDrop | march | soft
    bass: str  # root | walking | octave | rootfifth | syncopated | sixteenth
    swing: float = 0.0
    lead_density: float = 0.5


STYLES: tuple[Style, ...] = (
    Style(
        "rock",
        (110, 145),
        4,
        (MAJOR, MIXOLYDIAN, MINOR),
        ((0, 4, 5, 3), (0, 3, 4, 3), (0, 5, 3, 4)),
        (29, 30, 27),
        (33, 34),
        (29, 30, 81),
        "power",
        "rock",
        "octave",
        lead_density=0.35,
    ),
    Style(
        "jazz",
        (120, 180),
        4,
        (MAJOR, DORIAN),
        ((1, 4, 0, 0), (0, 5, 1, 4), (2, 5, 1, 4)),
        (0, 26, 4),
        (32,),
        (65, 66, 56, 11),
        "offbeat",
        "swing",
        "walking",
        swing=0.6,
        lead_density=0.6,
    ),
    Style(
        "electronic",
        (122, 135),
        4,
        (MINOR, DORIAN),
        ((0, 5, 3, 4), (0, 0, 5, 6), (0, 3, 5, 4)),
        (81, 80, 88, 90),
        (38, 39),
        (80, 81, 84),
        "arpeggio",
        "four",
        "sixteenth",
        lead_density=0.3,
    ),
    Style(
        "waltz",
        (90, 150),
        3,
        (MAJOR,),
        ((0, 3, 4, 0), (0, 4, 0, 4), (0, 5, 3, 4)),
        (0, 48, 6),
        (42, 43),
        (40, 73, 68),
        "oompah",
        "none",
        "root",
        lead_density=0.7,
    ),
    Style(
        "latin",
        (125, 150),
        4,
        (MAJOR, DORIAN),
        ((1, 4, 0, 0), (0, 5, 1, 4), (0, 3, 1, 4)),
        (24, 25, 0),
        (32, 33),
        (73, 65, 11),
        "strum",
        "clave",
        "rootfifth",
        lead_density=0.5,
    ),
    Style(
        "ballad",
        (58, 78),
        4,
        (MAJOR, MINOR),
        ((0, 5, 3, 4), (0, 4, 5, 3), (0, 3, 0, 4)),
        (0, 1, 46),
        (32, 42),
        (73, 68, 52, 40),
        "arpeggio",
        "soft",
        "root",
        lead_density=0.35,
    ),
    Style(
        "march",
        (108, 126),
        2,
        (MAJOR,),
        ((0, 4, 0, 4), (0, 3, 4, 0), (0, 0, 4, 4)),
        (61, 60, 57),
        (58,),
        (56, 72, 71),
        "block",
        "march",
        "rootfifth",
        lead_density=0.7,
    ),
    Style(
        "reggae",
        (70, 92),
        4,
        (MAJOR, MINOR),
        ((0, 3, 4, 3), (0, 5, 3, 4), (0, 3, 0, 4)),
        (16, 27, 17),
        (33, 34),
        (16, 65, 11),
        "offbeat",
        "oneDrop",
        "syncopated",
        lead_density=0.3,
    ),
)


def _swing_time(t: float, swing: float) -> float:
    """Delay off-beat eighths by `swing` of an eighth (0 = straight, 1 = full triplet feel)."""
    beat, frac = divmod(t, 1.0)
    return beat + (0.5 + swing * (1 / 6) if abs(frac - 0.5) < 1e-6 else frac)


def _drums(kind: str, bars: int, bpb: int, rng: np.random.Generator) -> list[Note]:
    """A drum part on the GM percussion channel."""
    hits: list[tuple[float, int, int]] = []  # (beat within bar, drum, velocity)
    if kind == "rock":
        hits = [(b / 2, HAT, 70) for b in range(2 * bpb)] + [
            (0, KICK, 110),
            (2, KICK, 100),
            (1, SNARE, 110),
            (3, SNARE, 110),
            (2.5, KICK, 80),
        ]
    elif kind == "swing":
        hits = [
            (0, RIDE, 80),
            (1, RIDE, 80),
            (1 + 2 / 3, RIDE, 60),
            (2, RIDE, 80),
            (3, RIDE, 80),
            (3 + 2 / 3, RIDE, 60),
            (1, HAT, 60),
            (3, HAT, 60),
            (0, KICK, 50),
        ]
    elif kind == "four":
        hits = [(b, KICK, 120) for b in range(bpb)] + [(b + 0.5, OPEN_HAT, 70) for b in range(bpb)]
        hits += [(1, CLAP, 100), (3, CLAP, 100)] + [(b / 4, HAT, 40) for b in range(4 * bpb)]
    elif kind == "clave":
        hits = [(t, CLAVE, 90) for t in (0, 0.75, 1.5, 2.5, 3)]
        hits += [(b / 2, SHAKER, 50) for b in range(2 * bpb)] + [(0, KICK, 80), (2, KICK, 80)]
    elif kind == "oneDrop":
        hits = [(2, KICK, 110), (2, RIM, 100)] + [(b / 2, HAT, 55) for b in range(2 * bpb)]
    elif kind == "march":
        hits = [(0, KICK, 110), (1, KICK, 90), (0.5, SNARE, 70), (1.5, SNARE, 70)]
        hits += [(1.25, SNARE, 60), (1.75, SNARE, 90)]
    elif kind == "soft":
        hits = [(0, KICK, 50), (2, RIM, 50)] + [(b, HAT, 35) for b in range(bpb)]
    notes = []
    for bar in range(bars):
        for beat, drum, vel in hits:
            if beat < bpb:
                v = vel + int(rng.integers(-8, 9))
                notes.append(Note(bar * bpb + beat, 0.2, drum, v, DRUMS))
        if kind != "none" and bar % 4 == 3 and rng.random() < 0.6:  # a fill
            notes += [
                Note(bar * bpb + bpb - 1 + i / 4, 0.2, TOM + 2 * (i % 3), 90, DRUMS)
                for i in range(4)
            ]
    return notes


def _comp(
    kind: str, chords: list[list[int]], bpb: int, swing: float, rng: np.random.Generator
) -> list[Note]:
    """Accompaniment (channel 1) from one chord per bar."""
    notes = []
    for bar, chord in enumerate(chords):
        t0 = bar * bpb
        if kind == "block":
            notes += [Note(t0 + b, 0.9, p, 75, 1) for b in range(bpb) for p in chord]
        elif kind == "pad":
            notes += [Note(t0, bpb, p, 65, 1) for p in chord]
        elif kind == "power":
            notes += [
                Note(t0 + b / 2, 0.45, p, 85, 1)
                for b in range(2 * bpb)
                for p in (chord[0] - 12, chord[0] - 5)
            ]
        elif kind == "arpeggio":
            seq = [*chord, chord[0] + 12, chord[1] + 12]
            step = 0.25 if rng.random() < 0.5 else 0.5
            notes += [
                Note(t0 + i * step, step * 1.5, seq[i % len(seq)], 70, 1)
                for i in range(int(bpb / step))
            ]
        elif kind == "offbeat":
            notes += [
                Note(t0 + _swing_time(b + 0.5, swing), 0.3, p, 72, 1)
                for b in range(bpb)
                for p in chord
            ]
        elif kind == "oompah":
            notes += [Note(t0, 0.9, chord[0] - 12, 80, 1)]
            notes += [Note(t0 + b, 0.6, p, 60, 1) for b in range(1, bpb) for p in chord]
        elif kind == "strum":
            for b in (0, 1.5, 2.5, 3.0):
                if b < bpb:
                    notes += [Note(t0 + b + 0.02 * i, 0.5, p, 70, 1) for i, p in enumerate(chord)]
    return notes


def _bass(kind: str, chords: list[list[int]], bpb: int, rng: np.random.Generator) -> list[Note]:
    """Bass line (channel 2) two octaves below the chord roots."""
    notes = []
    for bar, chord in enumerate(chords):
        t0, root = bar * bpb, chord[0] - 24
        nxt = chords[(bar + 1) % len(chords)][0] - 24
        if kind == "root":
            notes.append(Note(t0, bpb * 0.95, root, 90, 2))
        elif kind == "octave":
            notes += [Note(t0 + b / 2, 0.45, root + 12 * (b % 2), 95, 2) for b in range(2 * bpb)]
        elif kind == "walking":
            walk = [root, chord[1] - 24, chord[2] - 24, nxt + (1 if rng.random() < 0.5 else -1)]
            notes += [Note(t0 + b, 0.9, walk[b % 4], 85, 2) for b in range(bpb)]
        elif kind == "rootfifth":
            notes += [Note(t0 + b, 0.8, root + (7 if b % 2 else 0), 90, 2) for b in range(bpb)]
        elif kind == "syncopated":
            notes += [Note(t0 + b, 0.4, root + d, 95, 2) for b, d in ((0, 0), (1.5, 7), (2.5, 12))]
        elif kind == "sixteenth":
            notes += [
                Note(t0 + b / 4, 0.2, root + (12 if b % 4 == 2 else 0), 100, 2)
                for b in range(4 * bpb)
            ]
    return notes


def _melody(
    scale: tuple[int, ...],
    root: int,
    beats: int,
    density: float,
    swing: float,
    rng: np.random.Generator,
    channel: int = 3,
) -> list[Note]:
    """A random-walk melody on the scale, eighth-note grid."""
    notes, degree, t = [], int(rng.integers(len(scale), 2 * len(scale))), 0.0
    while t < beats:
        if rng.random() < density:
            dur = float(rng.choice([0.5, 0.5, 1.0, 1.5, 2.0]))
            degree = int(np.clip(degree + rng.integers(-2, 3), 3, 3 * len(scale)))
            notes.append(
                Note(
                    _swing_time(t, swing),
                    dur * 0.9,
                    degree_pitch(scale, root, degree),
                    int(rng.integers(70, 105)),
                    channel,
                )
            )
            t += dur
        else:
            t += 0.5
    return notes


def style_piece(style: Style, seed: int, seconds: float = 20.0) -> Piece:
    """One piece of `style` lasting about `seconds` (instruments, key, tempo drawn from seed)."""
    rng = np.random.default_rng(seed)
    bpm = float(rng.integers(style.tempo[0], style.tempo[1] + 1))
    bpb = style.beats_per_bar
    bars = int(np.ceil(seconds * bpm / 60 / bpb))
    scale = style.scales[rng.integers(len(style.scales))]
    root = 55 + int(rng.integers(0, 9))
    prog = style.progressions[rng.integers(len(style.progressions))]
    seventh = style.name in ("jazz", "latin")
    chords = [triad(scale, root, prog[b % len(prog)], seventh) for b in range(bars)]
    programs = {
        1: int(rng.choice(style.chord_programs)),
        2: int(rng.choice(style.bass_programs)),
        3: int(rng.choice(style.lead_programs + LEAD_POOL)),
    }
    notes = _comp(style.comp, chords, bpb, style.swing, rng)
    notes += _bass(style.bass, chords, bpb, rng)
    notes += _melody(scale, root, bars * bpb, style.lead_density, style.swing, rng)
    if style.drums != "none":
        notes += _drums(style.drums, bars, bpb, rng)
    return notes, programs, bpm


def generic_piece(seed: int, seconds: float = 12.0) -> Piece:
    """A random piece: 1-4 parts with random GM programs and textures, drums half the time."""
    rng = np.random.default_rng(seed)
    bpm = float(rng.integers(60, 181))
    bpb = int(rng.choice([2, 3, 4, 4]))
    bars = int(np.ceil(seconds * bpm / 60 / bpb))
    scale = (MAJOR, MINOR, DORIAN, MIXOLYDIAN, BLUES, PENTATONIC)[rng.integers(6)]
    root = 48 + int(rng.integers(0, 12))
    chords = [triad(scale, root, int(rng.integers(0, len(scale)))) for _ in range(bars)]
    programs: dict[int, int] = {}
    notes: list[Note] = []
    textures = ["melody", "block", "arpeggio", "pad", "bass", "offbeat", "melody_hi"]
    for ch in range(int(rng.integers(1, 5))):
        texture = textures[rng.integers(len(textures))]
        programs[ch] = int(rng.choice(GENERIC_PROGRAMS))
        if texture.startswith("melody"):
            part = _melody(
                scale,
                root + (12 if texture == "melody_hi" else 0),
                bars * bpb,
                float(rng.uniform(0.3, 0.9)),
                float(rng.choice([0.0, 0.6])),
                rng,
                ch,
            )
        elif texture == "bass":
            part = [
                Note(n.start, n.duration, n.pitch, n.velocity, ch)
                for n in _bass("rootfifth", chords, bpb, rng)
            ]
        else:
            part = [
                Note(n.start, n.duration, n.pitch, n.velocity, ch)
                for n in _comp(texture, chords, bpb, 0.0, rng)
            ]
        notes += part
    if rng.random() < 0.5:
        kind = ("rock", "swing", "four", "clave", "oneDrop", "soft")[rng.integers(6)]
        notes += _drums(kind, bars, bpb, rng)
    return notes, programs, bpm


def single_note(program: int, pitch: int, velocity: int, seconds: float = 0.8) -> Piece:
    """One sustained note of `program` at `pitch` (tempo 60, so beats are seconds)."""
    return [Note(0.0, seconds, pitch, velocity, 0)], {0: program}, 60.0


STYLE_BY_NAME: dict[str, Style] = {s.name: s for s in STYLES}
MAKERS: dict[str, Callable[..., Piece]] = {"style": style_piece, "generic": generic_piece}
