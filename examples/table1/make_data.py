"""Generate the Table I miniature's data: two pretraining corpora and five probe tasks.

    python examples/table1/make_data.py [--jobs 2]

Writes 16 kHz mono FLAC under examples/table1/data/ (git-ignored) and data/manifest.json:

- corpus/speech: espeak-ng sentences (many voices, pitches, speeds), plus the real speech in
  /work/shared/data/audio/speech (listed in the manifest, not copied).
- corpus/music: fluidsynth renders of random pieces and style pieces (MIDI written here) and of
  the openmsx songs (outside the 20-s excerpts in shared/), plus the shared music (listed).
- probe/: ks (keyword spotting), sid (speaker id), notes (single notes: pitch + instrument
  tasks share these clips), genre (style of a 2-s excerpt). Splits are fixed in the manifest.

Everything is deterministic (fixed seeds below, sorted inputs); probe items never reuse
pretraining sentences, seeds or shared audio. Needs: apt-get install -y espeak-ng fluidsynth
timgm6mb-soundfont openttd-openmsx.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import audio
import midi
import music_data
import numpy as np
import speech_data
from speech_data import KEYWORDS, LANGS, Voice
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SHARED_AUDIO = Path("/work/shared/data/audio")
OPENMSX = Path("/usr/share/games/openttd/baseset/openmsx")

SEEDS = {
    "speech_corpus": 1000,
    "ks": 2000,
    "sid": 3000,
    "music_generic": 4000,
    "music_style": 5000,
    "genre": 6000,
    "noise": 7000,
    "notes": 100_000,
}

# Sizes (pretraining audio in minutes: speech about 30 + 0.8 shared, music about 30 + 12 shared).
N_SPEECH_FILES = 240  # 2-3 sentences each, about 7.5 s
N_GENERIC_PIECES = 50  # 12 s each
N_STYLE_PIECES = 5  # per style, 12 s each
OPENMSX_SECONDS = (35.0, 24.0)  # start, length: disjoint from shared/ (its excerpts are 15-35 s)

KS_VOICES = (26, 14)  # train / test voices; their espeak variants are disjoint
SID_SPEAKERS = 24
SID_SENTENCES = (12, 8)  # train / test sentences, read by every speaker (1-s clips)
# Single notes (NSynth-like): 16 GM programs x 48 pitches, 0.5-s clips, random velocity/length.
NOTE_PROGRAMS = (0, 6, 11, 16, 19, 24, 30, 33, 40, 42, 56, 61, 65, 71, 73, 81)
NOTE_PITCHES = tuple(range(36, 84))  # C2..B5, 48 classes
PITCH_TEST_PROGRAMS = (6, 30, 42, 71)  # harpsichord, dist. guitar, cello, clarinet: unseen
INST_TEST_PITCHES = NOTE_PITCHES[1::4]  # 12 pitches unseen by the instrument probe
GENRE_PIECES = (10, 6)  # train / test pieces per style, two 2-s excerpts each


@dataclass
class Clip:
    """One probe clip: where it is written, its labels and split(s)."""

    path: str
    meta: dict = field(default_factory=dict)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(list(keys))


def _noisy(wav: np.ndarray, seed: int, snr: tuple[float, float] = (35.0, 50.0)) -> np.ndarray:
    rng = _rng(SEEDS["noise"], seed)
    return audio.peak_normalize(audio.add_noise(wav, rng, float(rng.uniform(*snr))))


# --------------------------------------------------------------------------------------------
# Jobs: top-level functions (picklable) that render one file; all randomness comes from args.
# --------------------------------------------------------------------------------------------


def _speech_file(path: Path, voice: Voice, texts: list[str], seed: int) -> float:
    rng = _rng(seed)
    parts = []
    for text in texts:
        parts.append(audio.trim_silence(speech_data.synthesize(text, voice)))
        parts.append(np.zeros(int(audio.SR * rng.uniform(0.2, 0.6)), dtype=np.float32))
    wav = _noisy(np.concatenate([np.zeros(1600, np.float32), *parts]), seed)
    audio.write(path, wav)
    return len(wav) / audio.SR


def _probe_clip(path: Path, wav: np.ndarray, seed: int) -> None:
    """Write a probe clip under random recording conditions (audio.degrade)."""
    audio.write(path, audio.peak_normalize(audio.degrade(wav, _rng(SEEDS["noise"], seed))))


def _word_clip(path: Path, word: str, voice: Voice, seed: int, seconds: float = 1.0) -> float:
    rng = _rng(seed)
    wav = audio.trim_silence(speech_data.synthesize(word, voice))
    length = int(seconds * audio.SR)
    offset = int(rng.integers(0, max(1, length - len(wav))))
    _probe_clip(path, audio.fit_length(wav, length, offset), seed)
    return seconds


def _sentence_clip(path: Path, text: str, voice: Voice, seed: int, seconds: float = 1.0) -> float:
    wav = audio.trim_silence(speech_data.synthesize(text, voice))
    _probe_clip(path, audio.fit_length(wav, int(seconds * audio.SR), 800), seed)
    return seconds


def _music_file(path: Path, maker: str, args: tuple, seed: int, seconds: float) -> float:
    if maker == "style":
        piece = music_data.style_piece(music_data.STYLE_BY_NAME[args[0]], seed, seconds)
    else:
        piece = music_data.generic_piece(seed, seconds)
    wav = midi.render(*piece)[: int(seconds * audio.SR)]
    audio.write(path, _noisy(wav, seed, (40.0, 60.0)))
    return len(wav) / audio.SR


def _openmsx_file(path: Path, song: Path) -> float:
    wav = midi.render_file(song)
    start, length = (int(s * audio.SR) for s in OPENMSX_SECONDS)
    seg = wav[start : start + length]
    if len(seg) < 10 * audio.SR:  # short song: use its beginning instead (before 15 s)
        seg = wav[: 15 * audio.SR]
    audio.write(path, audio.peak_normalize(seg))
    return len(seg) / audio.SR


def _note_set(paths: list[Path], program: int, seed: int, seconds: float = 0.5) -> float:
    """All pitches of one program in one render, 1.5 s apart, cut into `seconds` clips.

    Velocity (60-120) and note length (0.2-0.45 s) are drawn per note.
    """
    rng = _rng(seed)
    notes = [
        midi.Note(1.5 * i, float(rng.uniform(0.2, 0.45)), pitch, int(rng.integers(60, 121)), 0)
        for i, pitch in enumerate(NOTE_PITCHES)
    ]
    wav = midi.render(notes, {0: program}, 60.0)
    n = int(seconds * audio.SR)
    for i, path in enumerate(paths):
        start = int(1.5 * i * audio.SR)
        _probe_clip(path, audio.fit_length(wav[start : start + n], n, 800), seed + i)
    return len(paths) * seconds


def _genre_piece(paths: list[Path], style: str, seed: int) -> float:
    """Two 2-s excerpts (around 1.5 s and 7 s, jittered) of one 12-s style piece."""
    rng = _rng(seed)
    wav = midi.render(*music_data.style_piece(music_data.STYLE_BY_NAME[style], seed, 12.0))
    for path, t in zip(paths, (1.5, 7.0), strict=True):
        start = int((t + rng.uniform(-1.0, 1.0)) * audio.SR)
        _probe_clip(path, audio.fit_length(wav[start:], 2 * audio.SR), seed + int(t))
    return 2 * len(paths)


# --------------------------------------------------------------------------------------------
# Planning: lists of jobs and manifest entries, built deterministically in the main process.
# --------------------------------------------------------------------------------------------


def plan_speech_corpus() -> tuple[list[Callable[[], float]], list[str], set[str]]:
    rng = _rng(SEEDS["speech_corpus"])
    variants = speech_data.variants()
    n_sent = N_SPEECH_FILES * 3
    texts = speech_data.sentences(SEEDS["speech_corpus"], n_sent)
    jobs, files, k = [], [], 0
    for i in range(N_SPEECH_FILES):
        voice = Voice(
            LANGS[rng.integers(len(LANGS))],
            variants[rng.integers(len(variants))],
            int(rng.integers(15, 86)),
            int(rng.integers(130, 221)),
        )
        n = int(rng.integers(2, 4))
        rel = f"corpus/speech/espeak_{i:04d}.flac"
        seed = SEEDS["speech_corpus"] + i
        jobs.append(partial(_speech_file, DATA / rel, voice, texts[k : k + n], seed))
        files.append(rel)
        k += n
    shared = sorted(str(p) for p in (SHARED_AUDIO / "speech").glob("*.flac"))
    return jobs, files + shared, set(texts)


def plan_music_corpus() -> tuple[list[Callable[[], float]], list[str]]:
    jobs, files = [], []
    for i in range(N_GENERIC_PIECES):
        rel = f"corpus/music/generic_{i:03d}.flac"
        seed = SEEDS["music_generic"] + i
        jobs.append(partial(_music_file, DATA / rel, "generic", (), seed, 12.0))
        files.append(rel)
    for s, style in enumerate(music_data.STYLES):
        for i in range(N_STYLE_PIECES):
            rel = f"corpus/music/style_{style.name}_{i:02d}.flac"
            seed = SEEDS["music_style"] + 100 * s + i
            jobs.append(partial(_music_file, DATA / rel, "style", (style.name,), seed, 12.0))
            files.append(rel)
    songs = sorted(OPENMSX.glob("*.mid"))
    if not songs:
        sys.exit(f"no MIDI songs in {OPENMSX}: apt-get install -y openttd-openmsx")
    for song in songs:
        rel = f"corpus/music/openmsx_{song.stem}.flac"
        jobs.append(partial(_openmsx_file, DATA / rel, song))
        files.append(rel)
    shared = sorted(str(p) for p in (SHARED_AUDIO / "music").glob("*.flac"))
    return jobs, files + shared


def plan_ks() -> tuple[list[Callable[[], float]], dict]:
    rng = _rng(SEEDS["ks"])
    variants = speech_data.variants()
    order = rng.permutation(len(variants))
    n_train, n_test = KS_VOICES
    jobs, clips = [], []
    for v in range(n_train + n_test):
        base = Voice(
            LANGS[rng.integers(len(LANGS))],
            variants[order[v]],
            int(rng.integers(20, 81)),
            int(rng.integers(130, 211)),
        )
        split = "train" if v < n_train else "test"
        for w, word in enumerate(KEYWORDS):
            seed = SEEDS["ks"] + 100 * v + w
            voice = base.jitter(_rng(seed), 5, 10)
            rel = f"probe/ks/v{v:02d}_{word}.flac"
            jobs.append(partial(_word_clip, DATA / rel, word, voice, seed))
            clips.append({"path": rel, "label": w, "split": split, "voice": voice.name})
    return jobs, {
        "domain": "speech",
        "labels": list(KEYWORDS),
        "clips": clips,
        "split_by": "voice (held-out espeak variants)",
    }


def plan_sid(exclude: set[str]) -> tuple[list[Callable[[], float]], dict]:
    rng = _rng(SEEDS["sid"])
    variants = speech_data.variants()
    order = rng.permutation(len(variants))
    n_train, n_test = SID_SENTENCES
    texts = speech_data.sentences(SEEDS["sid"], n_train + n_test, exclude=exclude)
    jobs, clips, labels = [], [], []
    for s in range(SID_SPEAKERS):
        base = Voice(
            LANGS[rng.integers(len(LANGS))],
            variants[order[s]],
            int(rng.integers(20, 81)),
            int(rng.integers(140, 201)),
        )
        labels.append(f"{base.name}/p{base.pitch}/s{base.speed}")
        for t, text in enumerate(texts):
            seed = SEEDS["sid"] + 100 * s + t
            voice = base.jitter(_rng(seed), 4, 10)
            rel = f"probe/sid/spk{s:02d}_{t:02d}.flac"
            jobs.append(partial(_sentence_clip, DATA / rel, text, voice, seed))
            clips.append(
                {"path": rel, "label": s, "split": "train" if t < n_train else "test", "text": text}
            )
    return jobs, {
        "domain": "speech",
        "labels": labels,
        "clips": clips,
        "split_by": "sentence (every speaker reads the same 20 sentences)",
    }


def plan_notes() -> tuple[list[Callable[[], float]], dict, dict]:
    jobs, pitch_clips, inst_clips = [], [], []
    for p, program in enumerate(NOTE_PROGRAMS):
        rels = [f"probe/notes/prog{program:03d}_pitch{pitch}.flac" for pitch in NOTE_PITCHES]
        seed = SEEDS["notes"] + 1000 * program
        jobs.append(partial(_note_set, [DATA / r for r in rels], program, seed))
        for rel, pitch in zip(rels, NOTE_PITCHES, strict=True):
            meta = {"path": rel, "program": program, "pitch": pitch}
            pitch_clips.append(
                meta
                | {
                    "label": NOTE_PITCHES.index(pitch),
                    "split": "test" if program in PITCH_TEST_PROGRAMS else "train",
                }
            )
            inst_clips.append(
                meta | {"label": p, "split": "test" if pitch in INST_TEST_PITCHES else "train"}
            )
    pitch = {
        "domain": "music",
        "labels": [str(p) for p in NOTE_PITCHES],
        "clips": pitch_clips,
        "split_by": f"instrument (test programs {list(PITCH_TEST_PROGRAMS)})",
    }
    inst = {
        "domain": "music",
        "labels": [str(p) for p in NOTE_PROGRAMS],
        "clips": inst_clips,
        "split_by": f"pitch (test pitches {list(INST_TEST_PITCHES)})",
    }
    return jobs, pitch, inst


def plan_genre() -> tuple[list[Callable[[], float]], dict]:
    jobs, clips = [], []
    n_train, n_test = GENRE_PIECES
    for s, style in enumerate(music_data.STYLES):
        for i in range(n_train + n_test):
            rels = [f"probe/genre/{style.name}_{i:02d}_{k}.flac" for k in range(2)]
            seed = SEEDS["genre"] + 100 * s + i
            jobs.append(partial(_genre_piece, [DATA / r for r in rels], style.name, seed))
            for rel in rels:
                clips.append(
                    {
                        "path": rel,
                        "label": s,
                        "piece": i,
                        "split": "train" if i < n_train else "test",
                    }
                )
    return jobs, {
        "domain": "music",
        "labels": [s.name for s in music_data.STYLES],
        "clips": clips,
        "split_by": "piece (held-out pieces of each style)",
    }


def run_jobs(name: str, jobs: list[Callable[[], float]], workers: int) -> float:
    """Run jobs (in a process pool when workers > 1) and return the audio seconds written."""
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        total = 0.0
        for secs in tqdm(
            pool.map(_call, jobs, chunksize=4), total=len(jobs), desc=name, file=sys.stderr
        ):
            total += secs
    return total


def _call(job: Callable[[], float]) -> float:
    return job()


class _Serial:
    """Stand-in for an executor that runs in-process (for --jobs 1)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable, items: list, chunksize: int = 1):
        return map(fn, items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    start = time.time()

    speech_jobs, speech_files, speech_texts = plan_speech_corpus()
    music_jobs, music_files = plan_music_corpus()
    ks_jobs, ks = plan_ks()
    sid_jobs, sid = plan_sid(exclude=speech_texts)
    note_jobs, pitch, inst = plan_notes()
    genre_jobs, genre = plan_genre()

    seconds = {
        "corpus/speech": run_jobs("speech corpus", speech_jobs, args.jobs),
        "corpus/music": run_jobs("music corpus", music_jobs, args.jobs),
        "probe/ks": run_jobs("ks", ks_jobs, args.jobs),
        "probe/sid": run_jobs("sid", sid_jobs, args.jobs),
        "probe/notes": run_jobs("notes", note_jobs, args.jobs),
        "probe/genre": run_jobs("genre", genre_jobs, args.jobs),
    }
    manifest = {
        "sample_rate": audio.SR,
        "seeds": SEEDS,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "corpora": {"speech": speech_files, "music": music_files},
        "tasks": {"ks": ks, "sid": sid, "pitch": pitch, "inst": inst, "genre": genre},
    }
    (DATA / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for key, secs in seconds.items():
        print(f"{key:14s} {secs / 60:6.1f} min")
    for name, task in manifest["tasks"].items():
        n_test = sum(c["split"] == "test" for c in task["clips"])
        print(
            f"{name:6s} {len(task['labels']):3d} classes, {len(task['clips']) - n_test} train,"
            f" {n_test} test clips; split by {task['split_by']}"
        )
    print(f"wrote {DATA} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
