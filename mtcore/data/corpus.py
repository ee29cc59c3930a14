"""Parallel text: readers for aligned files, TSV and Hugging Face ``datasets``, and seeded splits.

A malformed file is an error that names the file and the line, never a silent misalignment: one
bad line in an aligned pair shifts every later pair. With ``on_error="skip"`` a pair with an empty
side is dropped instead, and counted in ``Corpus.skipped`` so the caller can report it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtcore.data.synthetic import synthetic_pairs
from mtcore.errors import MTCoreError


@dataclass(frozen=True)
class Corpus:
    """Aligned sentence pairs: ``source[i]`` translates to ``target[i]``."""

    source: tuple[str, ...]
    target: tuple[str, ...]
    name: str = "corpus"
    # Pairs dropped while reading (an empty side), with where they were: "file:line".
    skipped: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if len(self.source) != len(self.target):
            raise MTCoreError(f"{self.name}: {len(self.source)} source sentences but {len(self.target)} targets")

    def __len__(self) -> int:
        return len(self.source)

    def subset(self, indices: Sequence[int], name: str) -> Corpus:
        return Corpus(tuple(self.source[i] for i in indices), tuple(self.target[i] for i in indices), name)


def synthetic_corpus(size: int = 4000, seed: int = 0) -> Corpus:
    """The synthetic English -> Hungarian corpus (``mtcore.data.synthetic``): ``size`` distinct
    pairs, the same for the same seed on every machine."""
    pairs = synthetic_pairs(size, seed)
    return Corpus(tuple(pairs), tuple(pairs.values()), f"synthetic-{size}-seed{seed}")


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file without their line ends; a decoding error names the line."""
    if not path.is_file():
        raise MTCoreError(f"{path}: no such file")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise MTCoreError(f"{path}:{number}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return out


def _pairs(sources, targets, where, name, on_error) -> Corpus:
    """Keep pairs with two non-empty sides; ``where(i, side)`` says which file and line pair i came from."""
    if on_error not in ("raise", "skip"):
        raise MTCoreError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    src, tgt, skipped = [], [], []
    for i, (s, t) in enumerate(zip(sources, targets, strict=True)):
        s, t = s.strip(), t.strip()
        if not s or not t:
            side = "source" if not s else "target"
            if on_error == "raise":
                raise MTCoreError(f"{where(i, side)}: empty {side} sentence (--on-error skip on the command line, "
                                  "on_error='skip' in Python, drops such pairs)")
            skipped.append(where(i, side))
            continue
        src.append(s)
        tgt.append(t)
    if not src:
        raise MTCoreError(f"{name}: no sentence pairs")
    return Corpus(tuple(src), tuple(tgt), name, tuple(skipped))


def read_parallel(source_file: str | os.PathLike, target_file: str | os.PathLike, *, on_error: str = "raise") -> Corpus:
    """Two aligned files, one sentence per line (``corpus.en`` and ``corpus.hu``)."""
    source_file, target_file = Path(source_file), Path(target_file)
    sources, targets = _read_lines(source_file), _read_lines(target_file)
    if len(sources) != len(targets):
        raise MTCoreError(
            f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}: the files are not aligned"
        )

    def where(i, side):
        return f"{source_file if side == 'source' else target_file}:{i + 1}"

    return _pairs(sources, targets, where, source_file.stem, on_error)


def read_tsv(path: str | os.PathLike, *, on_error: str = "raise") -> Corpus:
    """One pair per line: ``source<TAB>target``."""
    path = Path(path)
    sources, targets = [], []
    for number, line in enumerate(_read_lines(path), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise MTCoreError(f"{path}:{number}: expected 2 tab-separated fields (source, target), found {len(fields)}")
        sources.append(fields[0])
        targets.append(fields[1])
    return _pairs(sources, targets, lambda i, side: f"{path}:{i + 1}", path.stem, on_error)


def read_hf_dataset(name_or_path: str, *, split: str = "train", source_lang: str = "en", target_lang: str = "hu",
                    on_error: str = "raise") -> Corpus:
    """A Hugging Face dataset of ``{"translation": {source_lang: ..., target_lang: ...}}`` rows (the
    layout of opus_books, wmt, tatoeba), or of plain ``source_lang``/``target_lang`` columns: from a
    directory written by ``save_to_disk``, or any name ``datasets.load_dataset`` knows."""
    try:
        import datasets
    except ImportError:
        raise MTCoreError("reading a Hugging Face dataset needs the 'datasets' package (pip install datasets)") from None
    try:
        path = Path(name_or_path)
        saved = path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())
        if saved:
            ds = datasets.load_from_disk(name_or_path)
        else:
            ds = datasets.load_dataset(name_or_path)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise MTCoreError(f"{name_or_path}: cannot load the dataset ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise MTCoreError(f"{name_or_path}: no split {split!r}; it has {', '.join(ds)}")
        ds = ds[split]
    columns = ds.column_names
    if "translation" in columns:
        rows = ds["translation"]
        missing = [lang for lang in (source_lang, target_lang) if rows and lang not in rows[0]]
        if missing:
            raise MTCoreError(f"{name_or_path}: translations have no {', '.join(missing)} (found {', '.join(rows[0])})")
        sources, targets = [r[source_lang] or "" for r in rows], [r[target_lang] or "" for r in rows]
    elif source_lang in columns and target_lang in columns:
        sources, targets = [s or "" for s in ds[source_lang]], [t or "" for t in ds[target_lang]]
    else:
        raise MTCoreError(
            f"{name_or_path}: expected a 'translation' column or '{source_lang}' and '{target_lang}' columns, "
            f"found {', '.join(columns)}"
        )
    return _pairs(sources, targets, lambda i, side: f"{name_or_path}[{split}] row {i}", Path(name_or_path).name, on_error)


def load_corpus(spec: str | os.PathLike, *, source_lang: str = "en", target_lang: str = "hu", on_error: str = "raise",
                synthetic_size: int = 4000, seed: int = 0) -> Corpus:
    """What ``--data`` names: ``synthetic``; a file prefix ``DIR/corpus`` (reads ``corpus.en`` and
    ``corpus.hu``); a ``.tsv`` file; a saved Hugging Face dataset directory; ``hf:NAME`` for
    ``datasets.load_dataset(NAME)``."""
    spec = os.fspath(spec)
    if spec == "synthetic":
        return synthetic_corpus(synthetic_size, seed=seed)
    if spec.startswith("hf:"):
        return read_hf_dataset(spec[3:], source_lang=source_lang, target_lang=target_lang, on_error=on_error)
    path = Path(spec)
    if path.suffix == ".tsv":
        return read_tsv(path, on_error=on_error)
    if path.is_dir():
        return read_hf_dataset(spec, source_lang=source_lang, target_lang=target_lang, on_error=on_error)
    src, tgt = Path(f"{spec}.{source_lang}"), Path(f"{spec}.{target_lang}")
    if src.is_file() or tgt.is_file():
        return read_parallel(src, tgt, on_error=on_error)
    raise MTCoreError(
        f"--data {spec!r}: not 'synthetic', a .tsv file, a dataset directory, 'hf:NAME', or a prefix with "
        f"{src.name} and {tgt.name} beside it"
    )


@dataclass(frozen=True)
class Splits:
    train: Corpus
    validation: Corpus
    test: Corpus


def split(corpus: Corpus, *, validation: int | float = 0.05, test: int | float = 0.05, seed: int = 0) -> Splits:
    """Disjoint train/validation/test by a seeded permutation; sizes are counts or fractions."""

    def count(x: int | float) -> int:
        n = round(x * len(corpus)) if isinstance(x, float) else int(x)
        return max(1, n)

    n_valid, n_test = count(validation), count(test)
    if n_valid + n_test >= len(corpus):
        raise MTCoreError(f"{corpus.name}: {len(corpus)} pairs cannot give {n_valid} validation and {n_test} test pairs and a training set")
    order = np.random.default_rng(seed).permutation(len(corpus))
    return Splits(
        train=corpus.subset(order[n_valid + n_test:], f"{corpus.name}/train"),
        validation=corpus.subset(order[:n_valid], f"{corpus.name}/validation"),
        test=corpus.subset(order[n_valid:n_valid + n_test], f"{corpus.name}/test"),
    )
