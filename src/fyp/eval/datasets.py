"""Loaders for real recommendation datasets in their native file formats.

Every loader returns a :class:`~fyp.eval.data.Dataset` over dense integer ids:

* **Labels** are the source's ids as strings (``"42"``), exactly as written in the files for
  string-id formats (the generic CSV, Grocery) and as canonical integers for formats whose ids are
  integers (MovieLens, LightGCN, TikTok, Last.fm, sequences).
* **Dense indices** follow the order of first appearance across the dataset's files, train first,
  then validation, then test, then items known only from feature files (rows of a vector file,
  entries of a metadata file). So one id maps to one index in every part of a given split, and
  items without interactions still exist in the id space when the dataset defines them.
* ``Dataset.interactions`` is every interaction the dataset has (for a given split: train, then
  validation, then test rows, each part in file order).

:func:`load_dataset` detects the format of a directory (or a file) and calls the right loader.
Nothing here knows where datasets live on a particular machine: pass a path, or set
``FYP_EVAL_DATA`` to a directory of datasets and pass a folder name.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fyp.eval.data import Dataset, FloatArray, IntArray, Interactions, ItemFeatures, Split

__all__ = [
    "DATA_ENV",
    "FORMATS",
    "detect_format",
    "load_dataset",
    "load_grocery",
    "load_interactions_csv",
    "load_lastfm",
    "load_lightgcn",
    "load_movielens",
    "load_sequences",
    "load_tiktok",
]

DATA_ENV: Final = "FYP_EVAL_DATA"
"""Environment variable naming a directory of datasets, so :func:`load_dataset` accepts a bare
folder name (``load_dataset("lastfm")``) as well as a path."""

PathLike = str | os.PathLike[str]

# ---- shared helpers ------------------------------------------------------------------------------


def _factorize(*parts: Any) -> tuple[list[IntArray], list[str]]:
    """Dense codes for each part (numpy or Arrow arrays of raw ids, one type for all), assigned in
    order of first appearance across the parts in the order given; and the labels (``str`` of the
    raw ids) indexed by code."""
    arrays = [p if isinstance(p, pa.Array) else pa.array(p) for p in parts]
    combined = pa.concat_arrays(arrays) if arrays else pa.array([], pa.int64())
    if combined.null_count:
        raise ValueError("an id is missing (empty cell)")
    # Arrow's hash encoder numbers values as it first meets them: the order the contract names.
    encoded = pc.dictionary_encode(combined)
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    labels = [str(v) for v in encoded.dictionary.to_pylist()]
    bounds = np.cumsum([0, *(len(a) for a in arrays)])
    return [codes[bounds[i] : bounds[i + 1]] for i in range(len(arrays))], labels


def _float_column(column: Any, default: float = np.nan) -> FloatArray:
    """An Arrow numeric column as float64, nulls (empty cells) replaced by ``default``."""
    filled = pc.fill_null(pc.cast(column, pa.float64()), default)
    return np.asarray(filled.to_numpy(), dtype=np.float64)


def _read_table(
    path: Path,
    columns: Sequence[str] | None,
    types: Mapping[str, Any],
    *,
    delimiter: str = ",",
    header: bool = True,
    data: bytes | None = None,
    multiline: bool = False,
) -> Any:
    """A delimited file as an Arrow table, reading only the columns named in ``types`` (which
    pins their types: ids are pinned so that ``007`` stays ``007``). ``columns`` is the header
    (or, for a file without one, the names to give its columns). ``multiline`` allows quoted
    cells spanning lines, at the cost of Arrow's parallel parsing."""
    read = pacsv.ReadOptions(column_names=None if header else list(columns or []))
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=multiline)
    include = [c for c in (columns or []) if c in types] if header else list(types)
    convert = pacsv.ConvertOptions(column_types=dict(types), include_columns=include or None)
    source = pa.BufferReader(data) if data is not None else str(path)
    try:
        return pacsv.read_csv(
            source, read_options=read, parse_options=parse, convert_options=convert
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _read_id_lines(path: Path) -> tuple[IntArray, IntArray, IntArray]:
    """A ``user item item ...`` file: each line's user, each line's item count, and all items in
    file order. Lines with a user and no items register the user; blank lines are skipped."""
    users: list[str] = []
    lengths: list[int] = []
    tokens: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            parts = line.split()
            if parts:
                users.append(parts[0])
                lengths.append(len(parts) - 1)
                tokens.extend(parts[1:])
    try:
        return (
            np.array(users, dtype=np.int64),
            np.array(lengths, dtype=np.int64),
            np.array(tokens, dtype=np.int64),
        )
    except ValueError as exc:
        raise ValueError(f"{path}: ids must be integers ({exc})") from exc


def _positions(user: IntArray) -> FloatArray:
    """Each row's position among its user's rows, in row order (0, 1, 2, ...)."""
    if len(user) == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(user, kind="stable")
    sorted_users = user[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    run = np.diff(np.r_[starts, len(user)])
    rank = np.arange(len(user)) - np.repeat(starts, run)
    out = np.empty(len(user), dtype=np.float64)
    out[order] = rank
    return out


def _concat(parts: Sequence[Interactions]) -> Interactions:
    """Parts over one id space, stacked in the order given."""
    first = parts[0]

    def stack(columns: list[npt.NDArray[Any] | None]) -> npt.NDArray[Any] | None:
        present = [c for c in columns if c is not None]
        if not present:
            return None
        if len(present) != len(columns):
            raise ValueError("parts disagree on which columns they have")
        return np.concatenate(present)

    timestamp = stack([p.timestamp for p in parts])
    weight = stack([p.weight for p in parts])
    return Interactions(
        user=np.concatenate([p.user for p in parts]),
        item=np.concatenate([p.item for p in parts]),
        user_labels=first.user_labels,
        item_labels=first.item_labels,
        timestamp=None if timestamp is None else timestamp.astype(np.float64),
        weight=None if weight is None else weight.astype(np.float64),
        extra={k: np.concatenate([p.extra[k] for p in parts]) for k in first.extra},
    )


def _given_dataset(
    name: str,
    parts: Mapping[str, Interactions],
    *,
    items: ItemFeatures | None,
    description: str,
) -> Dataset:
    """A dataset whose files give its split: ``parts`` has ``train`` and ``test`` and maybe
    ``validation``, all over one id space."""
    train, test = parts["train"], parts["test"]
    validation = parts.get("validation")
    split = Split(
        protocol="given",
        train=train,
        test=test,
        validation=validation,
        train_for_validation=train if validation is not None else None,
    )
    everything = _concat([p for p in (train, validation, test) if p is not None])
    return Dataset(
        name=name,
        interactions=everything,
        given_split=split,
        items=items,
        description=description,
    )


def _split_tags(text: str) -> list[str]:
    """Tags written as ``a|b|c`` or as a JSON list; blanks dropped, order kept."""
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except ValueError as exc:
            raise ValueError(f"tags {stripped[:40]!r} are not a valid JSON list") from exc
        if not isinstance(values, list):
            raise ValueError(f"tags {stripped[:40]!r} are not a JSON list")
        parts = [str(v).strip() for v in values]
    else:
        parts = [p.strip() for p in stripped.split("|")]
    return [p for p in parts if p]


def _dense_rows(codes: IntArray, n: int) -> IntArray:
    """For rows of a feature file whose items got ``codes``: the file row of each dense item
    (``-1`` where the file has none). A later row for the same item wins."""
    rows = np.full(n, -1, dtype=np.int64)
    rows[codes] = np.arange(len(codes), dtype=np.int64)
    return rows


# ---- MovieLens -----------------------------------------------------------------------------------

_ML100K_GENRES: Final = (
    *("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime"),
    *("Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery"),
    *("Romance", "Sci-Fi", "Thriller", "War", "Western"),
)
"""The genre columns of ml-100k's ``u.item``, used when ``u.genre`` is absent."""
_NO_GENRE: Final = frozenset({"(no genres listed)", "unknown"})


def _read_dat(path: Path, n_fields: int) -> list[list[str]]:
    """A ``::`` separated MovieLens ``.dat`` file (ml-1m, ml-10m); Latin-1 as those files are."""
    rows = []
    with path.open(encoding="latin-1") as lines:
        for line in lines:
            line = line.rstrip("\r\n")
            if line:
                rows.append(line.split("::", n_fields - 1))
    return rows


def _movielens_ratings(directory: Path) -> tuple[Any, str]:
    types = {
        "userId": pa.int64(),
        "movieId": pa.int64(),
        "rating": pa.float64(),
        "timestamp": pa.float64(),
    }
    columns = list(types)
    if (path := directory / "ratings.csv").is_file():
        return _read_table(path, columns, types), path.name
    if (path := directory / "ratings.dat").is_file():
        # Arrow reads single-character delimiters only; ids and numbers never contain a tab.
        data = path.read_bytes().replace(b"::", b"\t")
        return _read_table(path, columns, types, delimiter="\t", header=False, data=data), path.name
    if (path := directory / "u.data").is_file():
        return _read_table(path, columns, types, delimiter="\t", header=False), path.name
    raise FileNotFoundError(f"{directory}: no ratings.csv, ratings.dat or u.data")


def _movielens_movies(directory: Path) -> list[tuple[int, str, list[str]]]:
    """``(movie id, title, genres)`` from ``movies.csv``, ``movies.dat`` or ``u.item``."""
    movies: list[tuple[int, str, list[str]]] = []
    if (path := directory / "movies.csv").is_file():
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                movies.append((int(row["movieId"]), row["title"], row["genres"].split("|")))
    elif (path := directory / "movies.dat").is_file():
        for movie_id, title, genre_text in _read_dat(path, 3):
            movies.append((int(movie_id), title, genre_text.split("|")))
    elif (path := directory / "u.item").is_file():
        names: Sequence[str] = _ML100K_GENRES
        if (genre_path := directory / "u.genre").is_file():
            pairs = [
                line.split("|")
                for line in genre_path.read_text(encoding="latin-1").splitlines()
                if line.strip()
            ]
            names = [name for name, _ in sorted(pairs, key=lambda p: int(p[1]))]
        for line in path.read_text(encoding="latin-1").splitlines():
            if not line.strip():
                continue
            fields = line.split("|")
            flags = fields[5:]
            genres = [g for g, flag in zip(names, flags, strict=False) if flag.strip() == "1"]
            movies.append((int(fields[0]), fields[1], genres))
    return movies


def _movielens_tags(directory: Path) -> list[tuple[int, str]]:
    """``(movie id, tag)`` from ``tags.csv`` or ``tags.dat``, in file order."""
    if (path := directory / "tags.csv").is_file():
        with path.open(encoding="utf-8", newline="") as f:
            return [(int(row["movieId"]), row["tag"]) for row in csv.DictReader(f)]
    if (path := directory / "tags.dat").is_file():
        return [(int(fields[1]), fields[2]) for fields in _read_dat(path, 4)]
    return []


def _normal_tag(tag: str) -> str:
    return "-".join(tag.strip().lower().split())


def load_movielens(directory: PathLike) -> Dataset:
    """MovieLens from its native files in ``directory``.

    Ratings come from ``ratings.csv`` (``userId,movieId,rating,timestamp``, ml-latest and ml-20m
    on), ``ratings.dat`` (``::`` separated, ml-1m/ml-10m) or ``u.data`` (tab separated
    ``user item rating timestamp``, no header, ml-100k). ``weight`` is the rating and
    ``timestamp`` the Unix time in seconds.

    Items: ``text`` is the title (``movies.csv``, ``movies.dat`` or ``u.item``; ``""`` when
    unknown); ``tags`` are the genres, lowercased, with "(no genres listed)"/"unknown" dropped,
    followed by the users' free-text tags from ``tags.csv``/``tags.dat`` (lowercased, runs of
    whitespace turned into ``-``, each tag once per item). Movies listed in the movie file without
    ratings are part of the item space (after the rated ones). Tags on movies outside the item
    space are ignored. MovieLens has no given split.
    """
    directory = Path(directory)
    table, source = _movielens_ratings(directory)
    movies = _movielens_movies(directory)
    movie_ids = np.array([m[0] for m in movies], dtype=np.int64)
    (user,), user_labels = _factorize(table.column("userId").combine_chunks())
    (item, movie_codes), item_labels = _factorize(
        table.column("movieId").combine_chunks(), movie_ids
    )
    n_items = len(item_labels)
    text = [""] * n_items
    tags: list[list[str]] = [[] for _ in range(n_items)]
    for code, (_, title, genres) in zip(movie_codes.tolist(), movies, strict=True):
        text[code] = title
        tags[code] = [g.lower() for g in genres if g and g not in _NO_GENRE]
    index = {int(label): i for i, label in enumerate(item_labels)}
    seen = [set(t) for t in tags]
    for movie_id, tag in _movielens_tags(directory):
        code = index.get(movie_id)
        normal = _normal_tag(tag)
        if code is not None and normal and normal not in seen[code]:
            seen[code].add(normal)
            tags[code].append(normal)
    interactions = Interactions(
        user=user,
        item=item,
        user_labels=user_labels,
        item_labels=item_labels,
        timestamp=_float_column(table.column("timestamp")),
        weight=_float_column(table.column("rating")),
    )
    return Dataset(
        name=directory.resolve().name,
        interactions=interactions,
        items=ItemFeatures(text=text, tags=tags),
        description=f"MovieLens ratings from {source} (weight = rating; timestamps in seconds)",
    )


# ---- the generic interactions CSV ----------------------------------------------------------------

_EVENT_COLUMNS: Final = ("event", "event_type", "type")
_TEXT_COLUMNS: Final = ("text", "caption", "title")
_CREATOR_COLUMNS: Final = ("creator", "creator_id")


def _header(path: Path, delimiter: str = ",") -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        row = next(csv.reader(f, delimiter=delimiter), None)
    if not row:
        raise ValueError(f"{path}: empty file, expected a header")
    return row


def _epoch_seconds(text: str) -> float:
    """A numeric string as epoch seconds, else an ISO 8601 instant (naive means UTC)."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    try:
        instant = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(f"timestamp {stripped[:40]!r} is neither a number nor ISO 8601") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    return instant.timestamp()


def _timestamps(column: Any) -> FloatArray:
    """A string column of epoch seconds and/or ISO 8601 instants as float seconds."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    column = pc.utf8_trim_whitespace(column)
    try:
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Arrow parses uniform ISO 8601 fast: all with an offset, or all without (read as UTC).
    for kind in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            micros = pc.cast(pc.cast(column, kind), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return np.asarray(micros.to_numpy(), dtype=np.float64) / 1e6
    # Mixed forms: parse each distinct text once (logs repeat timestamps; Python is the slow part).
    encoded = pc.dictionary_encode(column)
    values = np.array([_epoch_seconds(v) for v in encoded.dictionary.to_pylist()], dtype=np.float64)
    indices = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return values[indices]


def _pick(columns: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The actual header name of the first of ``names`` present (matched case-insensitively)."""
    return next((columns[n] for n in names if n in columns), None)


def _read_items_csv(path: Path) -> tuple[list[str], dict[str, list[Any]]]:
    """An items file: the ids in file order and the present feature columns (``text``, ``tags``,
    ``creator``), one value per row."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        id_column = _pick(columns, ("item_id",))
        if id_column is None:
            raise ValueError(f"{path}: the header has no item_id column")
        text_column = _pick(columns, _TEXT_COLUMNS)
        tags_column = _pick(columns, ("tags",))
        creator_column = _pick(columns, _CREATOR_COLUMNS)
        ids: list[str] = []
        features: dict[str, list[Any]] = {}
        wanted = {"text": text_column, "tags": tags_column, "creator": creator_column}
        for key, column in wanted.items():
            if column is not None:
                features[key] = []
        for number, row in enumerate(reader, start=2):
            item_id = (row.get(id_column) or "").strip()
            if not item_id:
                raise ValueError(f"{path}: line {number}: empty item_id")
            ids.append(item_id)
            for key, column in wanted.items():
                if column is None:
                    continue
                value = row.get(column) or ""
                try:
                    features[key].append(_split_tags(value) if key == "tags" else value)
                except ValueError as exc:
                    raise ValueError(f"{path}: line {number}: {exc}") from exc
    return ids, features


def load_interactions_csv(path: PathLike, items_csv: PathLike | None = None) -> Dataset:
    """A log in fyp's generic interactions CSV format, and optionally an items file.

    The interactions file has a header naming at least ``user_id``, ``item_id`` and
    ``timestamp`` (names match case-insensitively; other columns are ignored). Ids are strings,
    kept as written but for surrounding whitespace. A timestamp is epoch seconds or an ISO 8601
    instant (without an offset it is read as UTC). Optional columns:

    * ``weight`` becomes ``Interactions.weight`` (an empty cell counts as 1.0). Without a
      ``weight`` column ``weight`` is ``None`` even when ``watch_ratio`` is there: how watching
      turns into preference is a model's decision, not the loader's.
    * ``watch_ratio`` and ``duration`` become float ``Interactions.extra`` columns (empty cells
      are NaN), and ``event`` (or ``event_type``, or ``type``) a string ``extra["event"]``
      column.

    ``items_csv`` has a header with ``item_id`` and any of: ``text`` (or ``caption`` or
    ``title``), ``tags`` (``a|b`` or a JSON list), ``creator`` (or ``creator_id``); a later row
    for the same item replaces an earlier one. Items listed only there join the item space after
    the items with interactions; items missing there get ``""`` / ``[]``. A feature column absent
    from the file is ``None`` in :class:`ItemFeatures`. The dataset has no given split; its name
    is the file's stem.
    """
    path = Path(path)
    header = _header(path)
    columns = {name.strip().lower(): name for name in header}
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in columns]
    if missing:
        raise ValueError(f"{path}: the header lacks {', '.join(missing)}")
    event_column = _pick(columns, _EVENT_COLUMNS)
    types: dict[str, Any] = {
        columns["user_id"]: pa.string(),
        columns["item_id"]: pa.string(),
        columns["timestamp"]: pa.string(),
    }
    for name in ("weight", "watch_ratio", "duration"):
        if name in columns:
            types[columns[name]] = pa.float64()
    if event_column is not None:
        types[event_column] = pa.string()
    # Apps' logs may quote free text (in columns not read here) with line breaks inside.
    table = _read_table(path, header, types, multiline=True)

    def strings(name: str) -> Any:
        column = table.column(name).combine_chunks()
        stripped = pc.utf8_trim_whitespace(column)
        if pc.any(pc.equal(stripped, "")).as_py():
            raise ValueError(f"{path}: an empty {name.strip()} cell")
        return stripped

    user_ids, item_ids = strings(columns["user_id"]), strings(columns["item_id"])
    (user,), user_labels = _factorize(user_ids)
    item_features: ItemFeatures | None = None
    if items_csv is not None:
        listed, features = _read_items_csv(Path(items_csv))
        (item, listed_codes), item_labels = _factorize(item_ids, pa.array(listed, pa.string()))
        rows = _dense_rows(listed_codes, len(item_labels))
        present = rows >= 0

        def per_item(values: list[Any] | None, empty: Callable[[], Any]) -> list[Any] | None:
            if values is None:
                return None
            return [values[r] if ok else empty() for r, ok in zip(rows, present, strict=True)]

        item_features = ItemFeatures(
            text=per_item(features.get("text"), str),
            tags=per_item(features.get("tags"), list),
            creator=per_item(features.get("creator"), str),
        )
    else:
        (item,), item_labels = _factorize(item_ids)
    extra: dict[str, npt.NDArray[Any]] = {}
    for name in ("watch_ratio", "duration"):
        if name in columns:
            extra[name] = _float_column(table.column(columns[name]))
    if event_column is not None:
        events = pc.fill_null(table.column(event_column).combine_chunks(), "")
        extra["event"] = np.asarray(events.to_pylist(), dtype=np.str_)
    interactions = Interactions(
        user=user,
        item=item,
        user_labels=user_labels,
        item_labels=item_labels,
        timestamp=_timestamps(table.column(columns["timestamp"])),
        weight=_float_column(table.column(columns["weight"]), 1.0) if "weight" in columns else None,
        extra=extra,
    )
    return Dataset(
        name=path.stem,
        interactions=interactions,
        items=item_features,
        description=f"generic interactions CSV {path.name}",
    )


# ---- LightGCN text, sequences --------------------------------------------------------------------


def _lines_part(
    line_users: IntArray, lengths: IntArray, items: IntArray, labels: tuple[list[str], list[str]]
) -> Interactions:
    """The rows of a ``user item item ...`` file from its lines' user codes and item counts."""
    return Interactions(
        user=np.repeat(line_users, lengths),
        item=items,
        user_labels=labels[0],
        item_labels=labels[1],
    )


def load_lightgcn(directory: PathLike) -> Dataset:
    """A dataset in the LightGCN / NGCF text format: ``train.txt`` and ``test.txt``, one line per
    user, ``user item item ...`` (integer ids, 0-based in the published files).

    The files give the split (train / test, no validation: see
    :func:`fyp.eval.protocols.given_split` to carve one). There are no timestamps; each user's
    rows keep the file's item order. A user whose line lists no items still exists.
    """
    directory = Path(directory)
    train_users, train_len, train_items = _read_id_lines(directory / "train.txt")
    test_users, test_len, test_items = _read_id_lines(directory / "test.txt")
    (train_line_codes, test_line_codes), user_labels = _factorize(train_users, test_users)
    (train_item, test_item), item_labels = _factorize(train_items, test_items)
    labels = (user_labels, item_labels)
    parts = {
        "train": _lines_part(train_line_codes, train_len, train_item, labels),
        "test": _lines_part(test_line_codes, test_len, test_item, labels),
    }
    return _given_dataset(
        directory.resolve().name,
        parts,
        items=None,
        description="LightGCN text format (train.txt/test.txt), given split, no timestamps",
    )


def load_sequences(path: PathLike) -> Dataset:
    """Per-user item sequences, one line per user: ``user item item ...`` in chronological order
    (Amazon Beauty's ``Beauty.txt`` from the S3-Rec/ICLRec preprocessing).

    There are no real timestamps, so ``timestamp`` is each row's position within its user's
    sequence (0, 1, 2, ...): temporal protocols then follow the sequence order. The usual protocol
    is :func:`fyp.eval.protocols.leave_last_n_out` with ``n=1`` (last item to test, the one before
    to validation). No given split; the dataset's name is the file's stem.
    """
    path = Path(path)
    line_users, lengths, items = _read_id_lines(path)
    (line_codes,), user_labels = _factorize(line_users)
    (item,), item_labels = _factorize(items)
    user = np.repeat(line_codes, lengths)
    interactions = Interactions(
        user=user,
        item=item,
        user_labels=user_labels,
        item_labels=item_labels,
        timestamp=_positions(user),
    )
    return Dataset(
        name=path.stem,
        interactions=interactions,
        description=f"item sequences from {path.name} (timestamp = position in the sequence)",
    )


# ---- TikTok (split CSVs with per-item vectors) ---------------------------------------------------

_VECTOR_SUFFIX: Final = "_feat.npy"


def load_tiktok(directory: PathLike) -> Dataset:
    """The TikTok micro-video dataset as converted from the DiffMM preprocessing (and any dataset in
    the same shape): ``train.csv``, optional ``val.csv``, ``test.csv`` with header
    ``user_id,item_id`` (integer ids, 0-based), and per-item vectors ``<name>_feat.npy``
    (``image_feat.npy``, ``audio_feat.npy``; row = item id) loaded as float32
    ``ItemFeatures.vectors[<name>]``, rows reordered to dense item indices.

    When vector files exist, their rows define the item space: every row is an item (TikTok: 6,710)
    even without interactions, and an interaction naming an item beyond the rows is an error. No
    timestamps.

    The split is given: the final model trains on ``train.csv`` only and is scored on
    ``test.csv``; ``val.csv`` is the validation part, tuned against with ``train.csv`` as
    ``train_for_validation``. So ``given_split.train`` is ``train.csv`` alone (not train plus
    validation), unlike protocols that carve validation out of training.
    """
    directory = Path(directory)
    types = {"user_id": pa.int64(), "item_id": pa.int64()}
    names = ["train", "validation", "test"]
    files = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
    tables = {
        part: _read_table(directory / files[part], list(types), types)
        for part in names
        if part != "validation" or (directory / files[part]).is_file()
    }
    present = [p for p in names if p in tables]
    vectors_raw = {
        path.name.removesuffix(_VECTOR_SUFFIX): np.load(path)
        for path in sorted(directory.glob(f"*{_VECTOR_SUFFIX}"))
    }
    n_rows = {v.shape[0] for v in vectors_raw.values()}
    if len(n_rows) > 1:
        raise ValueError(f"{directory}: vector files disagree on the number of items: {n_rows}")
    item_columns = [tables[p].column("item_id").combine_chunks() for p in present]
    feature_rows: list[Any] = []
    if n_rows:
        (rows,) = n_rows
        for column in item_columns:
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low is not None and (low < 0 or high >= rows):
                bad = high if high >= rows else low
                raise ValueError(f"{directory}: item {bad} has no row in the vector files")
        feature_rows = [np.arange(rows, dtype=np.int64)]
    user_codes, user_labels = _factorize(
        *(tables[p].column("user_id").combine_chunks() for p in present)
    )
    item_codes, item_labels = _factorize(*item_columns, *feature_rows)
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    if feature_rows:
        dense = item_codes[-1]
        for name, raw in vectors_raw.items():
            out = np.empty((len(item_labels), *raw.shape[1:]), dtype=np.float32)
            out[dense] = raw.astype(np.float32)
            vectors[name] = out
    parts = {
        part: Interactions(
            user=user_codes[i],
            item=item_codes[i],
            user_labels=user_labels,
            item_labels=item_labels,
        )
        for i, part in enumerate(present)
    }
    return _given_dataset(
        directory.resolve().name,
        parts,
        items=ItemFeatures(vectors=vectors) if vectors else None,
        description="split CSVs (train/val/test) with per-item vectors "
        f"{sorted(vectors) or 'none'}; given split trains on train.csv only; no timestamps",
    )


# ---- Last.fm -------------------------------------------------------------------------------------


def load_lastfm(directory: PathLike) -> Dataset:
    """Last.fm (hetrec-2011) as in LightGCN-PyTorch: ``data1.txt`` (train) and ``test1.txt``
    (test), tab separated ``user artist count`` without a header. ``weight`` is the listen
    count. Given split (no validation); no timestamps.
    """
    directory = Path(directory)
    types = {"user": pa.int64(), "item": pa.int64(), "count": pa.float64()}
    train, test = (
        _read_table(directory / name, list(types), types, delimiter="\t", header=False)
        for name in ("data1.txt", "test1.txt")
    )
    user_codes, user_labels = _factorize(
        train.column("user").combine_chunks(), test.column("user").combine_chunks()
    )
    item_codes, item_labels = _factorize(
        train.column("item").combine_chunks(), test.column("item").combine_chunks()
    )
    parts = {
        part: Interactions(
            user=user_codes[i],
            item=item_codes[i],
            user_labels=user_labels,
            item_labels=item_labels,
            weight=_float_column(table.column("count")),
        )
        for i, (part, table) in enumerate((("train", train), ("test", test)))
    }
    return _given_dataset(
        directory.resolve().name,
        parts,
        items=None,
        description="Last.fm listen counts (data1.txt/test1.txt), given split, weight = count",
    )


# ---- Grocery (ReChorus) --------------------------------------------------------------------------


def load_grocery(directory: PathLike) -> Dataset:
    """Amazon Grocery_and_Gourmet_Food as preprocessed by ReChorus: ``train.csv``, tab separated
    with header ``user_id item_id time`` (``time`` in Unix seconds), and optionally
    ``item_meta.csv`` (tab separated ``item_id i_category r_complement r_substitute``) whose
    category becomes the tag ``category:<i_category>``. Items listed only in the metadata join
    the item space after the items with interactions. The related-item lists are not loaded.

    Only ReChorus' training file is read (its ``dev.csv``/``test.csv`` carry sampled negatives
    and are not part of this format): there is no given split; cut one by time.
    """
    directory = Path(directory)
    path = directory / "train.csv"
    header = _header(path, "\t")
    types = {"user_id": pa.string(), "item_id": pa.string(), "time": pa.float64()}
    missing = [c for c in types if c not in header]
    if missing:
        raise ValueError(f"{path}: the header lacks {', '.join(missing)}")
    table = _read_table(path, header, types, delimiter="\t")
    (user,), user_labels = _factorize(table.column("user_id").combine_chunks())
    items_part = [table.column("item_id").combine_chunks()]
    meta_path = directory / "item_meta.csv"
    categories: list[str] = []
    if meta_path.is_file():
        meta_types = {"item_id": pa.string(), "i_category": pa.string()}
        meta = _read_table(meta_path, _header(meta_path, "\t"), meta_types, delimiter="\t")
        items_part.append(meta.column("item_id").combine_chunks())
        categories = meta.column("i_category").to_pylist()
    item_codes, item_labels = _factorize(*items_part)
    items: ItemFeatures | None = None
    if meta_path.is_file():
        rows = _dense_rows(item_codes[1], len(item_labels))
        items = ItemFeatures(
            tags=[
                [f"category:{categories[r].strip()}"] if r >= 0 and categories[r] else []
                for r in rows.tolist()
            ]
        )
    interactions = Interactions(
        user=user,
        item=item_codes[0],
        user_labels=user_labels,
        item_labels=item_labels,
        timestamp=_float_column(table.column("time")),
    )
    return Dataset(
        name=directory.resolve().name,
        interactions=interactions,
        items=items,
        description="ReChorus Grocery train.csv (timestamps in seconds), no given split",
    )


# ---- detection -----------------------------------------------------------------------------------

FORMATS: Final[dict[str, Callable[[Path], Dataset]]] = {
    "movielens": load_movielens,
    "lastfm": load_lastfm,
    "lightgcn": load_lightgcn,
    "grocery": load_grocery,
    "tiktok": load_tiktok,
    "interactions-csv": load_interactions_csv,
    "sequences": load_sequences,
}
"""The formats :func:`detect_format` names, each with its loader (called with the path)."""


def _is_rechorus(path: Path) -> bool:
    header = {name.strip().lower() for name in _header(path, "\t")}
    return {"user_id", "item_id", "time"} <= header


def _items_beside(path: Path) -> Path | None:
    """An ``items.csv`` (any case) next to an interactions file, other than the file itself."""
    for candidate in sorted(path.parent.iterdir()):
        if candidate.name.lower() == "items.csv" and candidate != path and candidate.is_file():
            return candidate
    return None


def _sequence_files(directory: Path) -> list[Path]:
    return [
        p
        for p in sorted(directory.glob("*.txt"))
        if p.is_file() and not p.name.lower().startswith(("readme", "license"))
    ]


def detect_format(path: PathLike) -> str:
    """The key in :data:`FORMATS` for the dataset at ``path`` (a directory or a file).

    Directories are told apart by their files, first match wins: ``ratings.csv``/``ratings.dat``/
    ``u.data`` (movielens); ``data1.txt`` + ``test1.txt`` (lastfm); ``train.txt`` + ``test.txt``
    (lightgcn); a tab separated ``train.csv`` with ``user_id item_id time`` (grocery);
    ``train.csv`` + ``test.csv`` (tiktok); ``interactions.csv`` (interactions-csv); a single
    other ``.txt`` file (sequences). A ``.csv`` file is the generic interactions format and a
    ``.txt`` file a sequences file. Raises :class:`ValueError` when nothing matches.
    """
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return "interactions-csv"
        if suffix == ".txt":
            return "sequences"
        raise ValueError(f"{path}: cannot tell the format of a {suffix or 'suffix-less'} file")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")

    def has(*names: str) -> bool:
        return all((path / name).is_file() for name in names)

    if has("ratings.csv") or has("ratings.dat") or has("u.data"):
        return "movielens"
    if has("data1.txt", "test1.txt"):
        return "lastfm"
    if has("train.txt", "test.txt"):
        return "lightgcn"
    if has("train.csv") and _is_rechorus(path / "train.csv"):
        return "grocery"
    if has("train.csv", "test.csv"):
        return "tiktok"
    if has("interactions.csv"):
        return "interactions-csv"
    if len(_sequence_files(path)) == 1:
        return "sequences"
    listing = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
    raise ValueError(f"{path}: no known dataset format (it holds {listing})")


def load_dataset(path_or_name: PathLike) -> Dataset:
    """Load the dataset at ``path_or_name``, detecting its format (:func:`detect_format`).

    ``path_or_name`` is a directory or a file; when it does not exist and ``$FYP_EVAL_DATA`` is
    set, it is looked up there (``load_dataset("tiktok")``). A generic interactions CSV picks up
    an ``items.csv`` beside it. The dataset is named after the directory (after the file's stem
    for a file).
    """
    path = Path(path_or_name)
    if not path.exists() and (root := os.environ.get(DATA_ENV)):
        path = Path(root) / path
    kind = detect_format(path)
    if path.is_dir():
        name = path.resolve().name
        if kind == "interactions-csv":
            target = path / "interactions.csv"
            dataset = load_interactions_csv(target, _items_beside(target))
        elif kind == "sequences":
            dataset = load_sequences(_sequence_files(path)[0])
        else:
            dataset = FORMATS[kind](path)
        return replace(dataset, name=name)
    if kind == "interactions-csv":
        return load_interactions_csv(path, _items_beside(path))
    return FORMATS[kind](path)
