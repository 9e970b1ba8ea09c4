"""Dataset loaders: every native format from small files written here, format detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fyp.eval.data import Dataset, Interactions
from fyp.eval.datasets import (
    DATA_ENV,
    detect_format,
    load_dataset,
    load_grocery,
    load_interactions_csv,
    load_lastfm,
    load_lightgcn,
    load_movielens,
    load_sequences,
    load_tiktok,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _pairs(part: Interactions) -> list[tuple[str, str]]:
    """Rows as (user label, item label), in row order."""
    return [
        (part.user_labels[u], part.item_labels[i])
        for u, i in zip(part.user.tolist(), part.item.tolist(), strict=True)
    ]


def _check_id_spaces(dataset: Dataset) -> None:
    """Every part shares the dataset's label lists and indices stay inside them."""
    everything = dataset.interactions
    split = dataset.given_split
    parts = [everything]
    if split is not None:
        parts += [p for p in (split.train, split.test, split.validation) if p is not None]
    for part in parts:
        assert list(part.user_labels) == list(everything.user_labels)
        assert list(part.item_labels) == list(everything.item_labels)
        assert part.user.dtype == np.int64 and part.item.dtype == np.int64
        assert (part.user >= 0).all() and (part.user < part.n_users).all()
        assert (part.item >= 0).all() and (part.item < part.n_items).all()
    assert len(set(everything.user_labels)) == everything.n_users
    assert len(set(everything.item_labels)) == everything.n_items


# ---- MovieLens -----------------------------------------------------------------------------------

MOVIES_CSV = """movieId,title,genres
10,"Heat, the Remake (1995)",Action|Crime|Thriller
20,Toy Tale (1995),Animation|Children|Comedy
30,Unrated Film (2001),(no genres listed)
"""
TAGS_CSV = """userId,movieId,tag,timestamp
1,20,Pixar,1000
2,20,pixar,1001
2,20,  Very   Funny ,1002
3,10,comedy,1003
1,99,orphan tag,1004
"""


def test_movielens_ratings_csv(tmp_path: Path) -> None:
    _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n7,20,4.5,300\n7,10,3.0,100\n8,20,5.0,200\n",
    )
    _write(tmp_path / "movies.csv", MOVIES_CSV)
    _write(tmp_path / "tags.csv", TAGS_CSV)
    ds = load_movielens(tmp_path)
    inter = ds.interactions
    assert ds.name == tmp_path.name and ds.given_split is None and ds.has_timestamps
    assert list(inter.user_labels) == ["7", "8"]
    # Rated movies first (first appearance), then the unrated one from movies.csv.
    assert list(inter.item_labels) == ["20", "10", "30"]
    assert _pairs(inter) == [("7", "20"), ("7", "10"), ("8", "20")]
    assert inter.weight is not None and inter.weight.tolist() == [4.5, 3.0, 5.0]
    assert inter.timestamp is not None and inter.timestamp.tolist() == [300.0, 100.0, 200.0]
    assert ds.items is not None and ds.items.text is not None and ds.items.tags is not None
    assert list(ds.items.text) == [
        "Toy Tale (1995)",
        "Heat, the Remake (1995)",
        "Unrated Film (2001)",
    ]
    assert [list(t) for t in ds.items.tags] == [
        ["animation", "children", "comedy", "pixar", "very-funny"],
        ["action", "crime", "thriller", "comedy"],
        [],
    ]
    _check_id_spaces(ds)


def test_movielens_u_data(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t1\t5\n")
    flags_242 = ["0"] * 19
    flags_242[3] = flags_242[5] = "1"  # Animation, Comedy
    flags_302 = ["1"] + ["0"] * 18  # unknown only
    _write(
        tmp_path / "u.item",
        f"242|Kolya (1996)|24-Jan-1997||http://x|{'|'.join(flags_242)}\n"
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|{'|'.join(flags_302)}\n",
    )
    ds = load_movielens(tmp_path)
    inter = ds.interactions
    assert (inter.n_users, inter.n_items, len(inter)) == (2, 2, 3)
    assert _pairs(inter) == [("196", "242"), ("186", "302"), ("196", "302")]
    assert inter.weight is not None and inter.weight.tolist() == [3.0, 3.0, 1.0]
    assert ds.items is not None and ds.items.tags is not None and ds.items.text is not None
    assert list(ds.items.text) == ["Kolya (1996)", "L.A. Confidential (1997)"]
    assert [list(t) for t in ds.items.tags] == [["animation", "comedy"], []]
    assert detect_format(tmp_path) == "movielens"


def test_movielens_u_data_without_items_and_dat_format(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "u.data", "1\t2\t5\t10\n")
    ds = load_movielens(tmp_path / "a")
    assert ds.items is not None and list(ds.items.text or []) == [""]
    _write(tmp_path / "b" / "ratings.dat", "1::1193::5::978300760\n2::1193::4::978300761\n")
    _write(tmp_path / "b" / "movies.dat", "1193::One Flew Over (1975)::Drama\n")
    ds = load_movielens(tmp_path / "b")
    assert _pairs(ds.interactions) == [("1", "1193"), ("2", "1193")]
    assert ds.items is not None and list(ds.items.text or []) == ["One Flew Over (1975)"]


# ---- the generic interactions CSV ----------------------------------------------------------------


def test_interactions_csv_full(tmp_path: Path) -> None:
    log = _write(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp,weight,watch_ratio,duration,event,ignored\n"
        "alice,v1,2024-01-01T00:00:00Z,2.0,0.5,30,play,x\n"
        "bob,v2,1704067260,,1.5,12.5,like,y\n"
        "alice,007,2024-01-01T02:00:00+01:00,1.0,,,skip,z\n",
    )
    items = _write(
        tmp_path / "things.csv",
        "item_id,caption,tags,creator_id\n"
        'v2,"A caption, with comma","[""Cats"", ""funny""]",c9\n'
        "v9,Only here,a|b|,c1\n",
    )
    ds = load_interactions_csv(log, items)
    inter = ds.interactions
    assert ds.name == "log" and ds.given_split is None
    assert list(inter.user_labels) == ["alice", "bob"]
    assert list(inter.item_labels) == ["v1", "v2", "007", "v9"]  # ids kept as written
    assert inter.timestamp is not None
    assert inter.timestamp.tolist() == [1704067200.0, 1704067260.0, 1704067200.0 + 3600.0]
    assert inter.weight is not None and inter.weight.tolist() == [2.0, 1.0, 1.0]
    assert np.allclose(inter.extra["watch_ratio"], [0.5, 1.5, np.nan], equal_nan=True)
    assert np.allclose(inter.extra["duration"], [30.0, 12.5, np.nan], equal_nan=True)
    assert inter.extra["event"].tolist() == ["play", "like", "skip"]
    assert ds.items is not None
    assert list(ds.items.text or []) == ["", "A caption, with comma", "", "Only here"]
    assert [list(t) for t in ds.items.tags or []] == [[], ["Cats", "funny"], [], ["a", "b"]]
    assert list(ds.items.creator or []) == ["", "c9", "", "c1"]
    _check_id_spaces(ds)


def test_interactions_csv_minimal_and_watch_ratio_leaves_weight_unset(tmp_path: Path) -> None:
    log = _write(
        tmp_path / "log.csv",
        "User_ID,item_id,timestamp,watch_ratio,type\nu1,i1,5,0.25,view\nu2,i1,2.5,1.0,view\n",
    )
    inter = load_interactions_csv(log).interactions
    assert inter.weight is None
    assert inter.extra["watch_ratio"].tolist() == [0.25, 1.0]
    assert inter.extra["event"].tolist() == ["view", "view"]
    assert inter.timestamp is not None and inter.timestamp.tolist() == [5.0, 2.5]


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (["2024-01-01T00:00:00", "2024-01-01 00:00:01.5"], [1704067200.0, 1704067201.5]),
        (["2024-01-01T01:00:00+01:00", "2024-01-01T00:00:00Z"], [1704067200.0, 1704067200.0]),
        (["2024-01-02", " 1704067200 "], [1704153600.0, 1704067200.0]),
    ],
    ids=["naive-is-utc", "offsets", "mixed"],
)
def test_interactions_csv_timestamp_forms(
    tmp_path: Path, cells: list[str], expected: list[float]
) -> None:
    rows = "".join(f"u,i{n},{cell}\n" for n, cell in enumerate(cells))
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp\n" + rows)
    inter = load_interactions_csv(log).interactions
    assert inter.timestamp is not None and inter.timestamp.tolist() == expected


def test_interactions_csv_ignores_quoted_multiline_columns(tmp_path: Path) -> None:
    log = _write(
        tmp_path / "log.csv",
        'user_id,note,item_id,timestamp\nu,"two\nlines, and a comma",i,1\nv,,j,2\n',
    )
    assert _pairs(load_interactions_csv(log).interactions) == [("u", "i"), ("v", "j")]


@pytest.mark.parametrize(
    "text",
    [
        "user_id,item_id\nu,i\n",  # no timestamp column
        "user_id,item_id,timestamp\nu,i,yesterday\n",  # unparseable time
        "user_id,item_id,timestamp\n,i,1\n",  # empty id
    ],
)
def test_interactions_csv_rejects_bad_input(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError):
        load_interactions_csv(_write(tmp_path / "bad.csv", text))


def test_load_dataset_finds_items_beside_a_csv(tmp_path: Path) -> None:
    _write(tmp_path / "app" / "interactions.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,2\n")
    _write(tmp_path / "app" / "ITEMS.csv", "item_id,title,tags\ni,Hello,x|y\n")
    by_dir = load_dataset(tmp_path / "app")
    by_file = load_dataset(tmp_path / "app" / "interactions.csv")
    assert by_dir.name == "app" and by_file.name == "interactions"
    for ds in (by_dir, by_file):
        assert ds.items is not None and list(ds.items.text or []) == ["Hello", ""]
        assert [list(t) for t in ds.items.tags or []] == [["x", "y"], []]


# ---- LightGCN text, sequences --------------------------------------------------------------------


def test_lightgcn_text(tmp_path: Path) -> None:
    _write(tmp_path / "train.txt", "0 5 3 9\n1 3\n\n2\n")
    _write(tmp_path / "test.txt", "0 7\n1 5 9\n3 3\n")
    ds = load_lightgcn(tmp_path)
    split = ds.given_split
    assert split is not None and split.protocol == "given" and split.validation is None
    assert not ds.has_timestamps
    inter = ds.interactions
    # User 2 lists no items yet exists; user 3 appears only in test.
    assert list(inter.user_labels) == ["0", "1", "2", "3"]
    assert list(inter.item_labels) == ["5", "3", "9", "7"]
    assert _pairs(split.train) == [("0", "5"), ("0", "3"), ("0", "9"), ("1", "3")]
    assert _pairs(split.test) == [("0", "7"), ("1", "5"), ("1", "9"), ("3", "3")]
    assert len(inter) == len(split.train) + len(split.test)
    _check_id_spaces(ds)
    assert detect_format(tmp_path) == "lightgcn"


def test_sequences_positions_are_timestamps(tmp_path: Path) -> None:
    path = _write(tmp_path / "Beauty.txt", "1 1 2 3\n2 4 1\n3 5\n")
    ds = load_sequences(path)
    inter = ds.interactions
    assert ds.name == "Beauty" and ds.given_split is None
    assert (inter.n_users, inter.n_items, len(inter)) == (3, 5, 6)
    assert inter.timestamp is not None and inter.timestamp.tolist() == [0, 1, 2, 0, 1, 0]
    assert [inter.item_labels[i] for i in inter.sequences()[1]] == ["4", "1"]
    loaded = load_dataset(tmp_path)
    assert loaded.name == tmp_path.name and len(loaded.interactions) == 6


# ---- TikTok --------------------------------------------------------------------------------------


def test_tiktok_split_and_vectors(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", "user_id,item_id\n0,2\n0,0\n1,2\n")
    _write(tmp_path / "val.csv", "user_id,item_id\n1,3\n")
    _write(tmp_path / "test.csv", "user_id,item_id\n2,0\n0,3\n")
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 4)).astype(np.float16)  # items 1 and 4: no interactions
    audio = rng.normal(size=(5, 3)).astype(np.float16)
    np.save(tmp_path / "image_feat.npy", image)
    np.save(tmp_path / "audio_feat.npy", audio)
    ds = load_tiktok(tmp_path)
    split = ds.given_split
    assert split is not None and split.validation is not None
    labels = list(ds.interactions.item_labels)
    assert labels == ["2", "0", "3", "1", "4"]  # first appearance, then vector-only rows
    assert list(ds.interactions.user_labels) == ["0", "1", "2"]
    # The given protocol trains on train.csv alone; val.csv tunes; test.csv scores.
    assert _pairs(split.train) == [("0", "2"), ("0", "0"), ("1", "2")]
    assert split.train_for_validation is split.train
    assert _pairs(split.validation) == [("1", "3")]
    assert _pairs(split.test) == [("2", "0"), ("0", "3")]
    assert len(ds.interactions) == 6
    assert ds.items is not None
    for name, raw in (("image", image), ("audio", audio)):
        vectors = ds.items.vectors[name]
        assert vectors.dtype == np.float32 and vectors.shape == (5, raw.shape[1])
        for dense, label in enumerate(labels):
            np.testing.assert_array_equal(vectors[dense], raw[int(label)].astype(np.float32))
    _check_id_spaces(ds)
    assert detect_format(tmp_path) == "tiktok"


def test_tiktok_rejects_items_beyond_vectors(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", "user_id,item_id\n0,7\n")
    _write(tmp_path / "test.csv", "user_id,item_id\n0,1\n")
    np.save(tmp_path / "image_feat.npy", np.zeros((3, 2), dtype=np.float16))
    with pytest.raises(ValueError, match="no row"):
        load_tiktok(tmp_path)


def test_tiktok_without_validation_or_vectors(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", "user_id,item_id\n0,1\n")
    _write(tmp_path / "test.csv", "user_id,item_id\n0,2\n")
    ds = load_tiktok(tmp_path)
    assert ds.items is None
    assert ds.given_split is not None and ds.given_split.validation is None


# ---- Last.fm, Grocery ----------------------------------------------------------------------------


def test_lastfm_counts_are_weights(tmp_path: Path) -> None:
    _write(tmp_path / "data1.txt", "424\t4076\t993\n1311\t1574\t957\n424\t1574\t5\n")
    _write(tmp_path / "test1.txt", "1311\t4076\t57\n99\t1\t2\n")
    ds = load_lastfm(tmp_path)
    split = ds.given_split
    assert split is not None and split.validation is None
    assert list(ds.interactions.user_labels) == ["424", "1311", "99"]
    assert list(ds.interactions.item_labels) == ["4076", "1574", "1"]
    assert split.train.weight is not None and split.train.weight.tolist() == [993, 957, 5]
    assert split.test.weight is not None and split.test.weight.tolist() == [57, 2]
    assert _pairs(split.test) == [("1311", "4076"), ("99", "1")]
    _check_id_spaces(ds)
    assert detect_format(tmp_path) == "lastfm"


def test_grocery_train_and_categories(tmp_path: Path) -> None:
    _write(
        tmp_path / "train.csv",
        "user_id\titem_id\ttime\n2177\t3\t965779200\n4161\t18\t1068249600\n2177\t18\t965779300\n",
    )
    _write(
        tmp_path / "item_meta.csv",
        "item_id\ti_category\tr_complement\tr_substitute\n"
        "18\t0\t[3, 5]\t[]\n3\t21\t[]\t[18]\n5\t4\t[]\t[]\n",
    )
    ds = load_grocery(tmp_path)
    inter = ds.interactions
    assert ds.given_split is None
    assert list(inter.item_labels) == ["3", "18", "5"]
    assert inter.timestamp is not None and inter.timestamp.tolist()[:2] == [965779200, 1068249600]
    assert ds.items is not None and ds.items.tags is not None
    assert [list(t) for t in ds.items.tags] == [["category:21"], ["category:0"], ["category:4"]]
    assert detect_format(tmp_path) == "grocery"


# ---- detection -----------------------------------------------------------------------------------


def test_detection_errors_and_named_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "empty" / "notes.md", "nothing here")
    with pytest.raises(ValueError, match="no known dataset format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing")
    _write(tmp_path / "root" / "mini" / "data1.txt", "1\t2\t3\n")
    _write(tmp_path / "root" / "mini" / "test1.txt", "1\t4\t1\n")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "root"))
    ds = load_dataset("mini")
    assert ds.name == "mini" and ds.given_split is not None


def test_tags_json_list_in_items_file(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,1\n")
    tags = json.dumps(["a b", "c"]).replace('"', '""')
    items = _write(tmp_path / "items.csv", f'item_id,tags\ni,"{tags}"\n')
    ds = load_interactions_csv(log, items)
    assert ds.items is not None and [list(t) for t in ds.items.tags or []] == [["a b", "c"]]
    assert ds.items.text is None and ds.items.creator is None
