"""A tiny standard-MIDI-file writer and a fluidsynth renderer."""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from audio import read

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
DRUMS = 9  # General MIDI percussion channel (0-based)
TICKS_PER_BEAT = 480


@dataclass(frozen=True)
class Note:
    """A note on `channel`, timed in beats."""

    start: float
    duration: float
    pitch: int
    velocity: int
    channel: int


def _vlq(n: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(notes: list[Note], programs: dict[int, int], bpm: float) -> bytes:
    """A format-0 MIDI file: one tempo, a program per channel, the notes."""
    events: list[tuple[int, int, bytes]] = []  # (tick, order, message); note-offs sort first
    events.append((0, 0, b"\xff\x51\x03" + int(60e6 / bpm).to_bytes(3, "big")))
    for ch, prog in sorted(programs.items()):
        if ch != DRUMS:
            events.append((0, 1, bytes([0xC0 | ch, prog & 0x7F])))
    for n in notes:
        on = round(n.start * TICKS_PER_BEAT)
        off = max(on + 1, round((n.start + n.duration) * TICKS_PER_BEAT))
        vel = int(np.clip(n.velocity, 1, 127))
        events.append((on, 3, bytes([0x90 | n.channel, n.pitch & 0x7F, vel])))
        events.append((off, 2, bytes([0x80 | n.channel, n.pitch & 0x7F, 0])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    track = bytearray()
    last = 0
    for tick, _, msg in events:
        track += _vlq(tick - last) + msg
        last = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def check_soundfont() -> None:
    if not SOUNDFONT.exists():
        sys.exit(f"{SOUNDFONT} not found: apt-get install -y fluidsynth timgm6mb-soundfont")


def render_file(midi_path: str | Path, gain: float = 0.6) -> np.ndarray:
    """Render a MIDI file with fluidsynth + TimGM6mb to mono float32 at 16 kHz (deterministic)."""
    check_soundfont()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(
            [
                "fluidsynth",
                "-ni",
                "-q",
                "-g",
                str(gain),
                "-r",
                "16000",
                "-F",
                str(out),
                str(SOUNDFONT),
                str(midi_path),
            ],
            check=True,
            capture_output=True,
        )
        return read(out)


def render(notes: list[Note], programs: dict[int, int], bpm: float) -> np.ndarray:
    """Render notes (see `midi_bytes`) to mono float32 audio at 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "song.mid"
        path.write_bytes(midi_bytes(notes, programs, bpm))
        return render_file(path)
