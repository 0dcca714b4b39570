"""recis.io.split and ``recis split``: disjoint, complete, deterministic; each method's rule."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from recis.cli import main
from recis.errors import ConfigError, DataError
from recis.io.split import read_input, split_by_time, split_files, split_table

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _log(n: int = 400, users: int = 30, seed: int = 0) -> pa.Table:
    """An interaction log with many equal timestamps (ties broken by item)."""
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user": rng.integers(0, users, n),
            "item": rng.integers(0, 50, n),
            "ts": rng.integers(0, 20, n),  # few distinct times: many ties
            "query": [f"q{int(v)}" for v in rng.integers(0, 60, n)],
            "row": np.arange(n),
        }
    )


def _rows(parts: dict[str, pa.Table]) -> dict[str, list[int]]:
    return {k: t.column("row").to_pylist() for k, t in parts.items()}


def _check_partition(parts: dict[str, pa.Table], n: int) -> None:
    rows = _rows(parts)
    every = [r for part in rows.values() for r in part]
    assert sorted(every) == list(range(n))  # complete and disjoint
    for part in rows.values():
        assert part == sorted(part)  # input order kept inside a part


@pytest.mark.parametrize(
    "method,opts",
    [
        ("random", {"fractions": [0.7, 0.1, 0.2], "seed": 3}),
        ("order", {"fractions": [0.8, 0.1, 0.1]}),
        ("time", {"time": "ts", "tiebreak": ["user", "item"], "fractions": [0.8, 0.2]}),
        ("leave-last-out", {"user": "user", "time": "ts", "item": "item", "valid": True}),
        ("group", {"group": "query", "fractions": [0.8, 0.2], "seed": 0}),
    ],
)
def test_split_is_disjoint_complete_and_deterministic(method: str, opts: dict) -> None:
    table = _log()
    parts = split_table(table, method, **opts)
    _check_partition(parts, table.num_rows)
    assert _rows(split_table(table, method, **opts)) == _rows(parts)


def test_random_split_sizes_and_seed() -> None:
    table = _log(1000)
    parts = split_table(table, "random", fractions=[0.7, 0.1, 0.2], seed=1)
    assert {k: t.num_rows for k, t in parts.items()} == {"train": 700, "valid": 100, "test": 200}
    other = split_table(table, "random", fractions=[0.7, 0.1, 0.2], seed=2)
    assert _rows(other)["test"] != _rows(parts)["test"]


def test_time_split_puts_the_earliest_rows_in_train() -> None:
    table = _log(500)
    parts = split_table(table, "time", time="ts", tiebreak=["user", "item"], fractions=[0.8, 0.2])
    assert parts["train"].num_rows == 400
    key = lambda t: list(zip(*(t.column(c).to_pylist() for c in ("ts", "user", "item", "row"))))  # noqa: E731
    assert max(key(parts["train"])) < min(key(parts["test"]))


def test_order_split_cuts_the_rows_as_stored(tmp_path: Path) -> None:
    """Logs in time order without a timestamp column (Criteo's day files): the first rows
    train, the last test, files taken in name order."""
    table = _log(100)
    parts = split_table(table, "order", fractions=[0.9, 0.1])
    assert _rows(parts) == {"train": list(range(90)), "test": list(range(90, 100))}
    for k in range(2):
        pq.write_table(table.slice(50 * k, 50), tmp_path / f"day_{k}.parquet")
    assert (
        main(
            [
                "split",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
                "--by",
                "order",
                "--fractions",
                "0.5",
                "0.5",
            ]
        )
        == 0
    )
    test = pq.read_table(tmp_path / "out" / "test.parquet")
    assert test.column("row").to_pylist() == list(range(50, 100))  # the second day


def test_leave_last_out_holds_out_each_users_latest() -> None:
    table = _log(400, users=30)
    parts = split_table(table, "leave-last-out", user="user", time="ts", item="item", valid=True)
    cols = {c: np.asarray(table.column(c)) for c in ("user", "item", "ts", "row")}
    want_test, want_valid = [], []
    for u in np.unique(cols["user"]):
        mine = sorted(
            (cols["ts"][i], cols["item"][i], cols["row"][i])
            for i in np.flatnonzero(cols["user"] == u)
        )
        if len(mine) >= 3:
            want_test.append(int(mine[-1][2]))
            want_valid.append(int(mine[-2][2]))
    rows = _rows(parts)
    assert rows["test"] == sorted(want_test) and rows["valid"] == sorted(want_valid)
    assert parts["test"].num_rows == len(np.unique(cols["user"]))  # every user has >= 3 rows here


def test_leave_last_out_keeps_a_lone_interaction_in_train() -> None:
    table = pa.table({"u": [1, 2, 2], "t": [5, 1, 2], "row": [0, 1, 2]})
    parts = split_table(table, "leave-last-out", user="u", time="t")
    assert _rows(parts) == {"train": [0, 1], "test": [2]}


def test_group_split_keeps_groups_whole_and_follows_md5() -> None:
    table = _log(600)
    parts = split_table(table, "group", group="query", fractions=[0.8, 0.2])
    train_q = set(parts["train"].column("query").to_pylist())
    test_q = set(parts["test"].column("query").to_pylist())
    assert train_q and test_q and not train_q & test_q
    for q in test_q:  # qbqtc's rule: md5 of the UTF-8 string, first 8 hex digits, mod 100
        assert int(hashlib.md5(q.encode()).hexdigest()[:8], 16) % 100 >= 80
    salted = split_table(table, "group", group="query", fractions=[0.8, 0.2], seed=7)
    assert set(salted["test"].column("query").to_pylist()) != test_q


def test_errors_name_the_column_or_flag() -> None:
    table = pa.table({"u": [1, None, 2], "t": [1, 2, 3]})
    with pytest.raises(DataError, match="column 'u', row 1"):
        split_table(table, "leave-last-out", user="u", time="t")
    with pytest.raises(ConfigError, match="--time is required"):
        split_table(table, "time")
    with pytest.raises(ConfigError, match="no column 'x'"):
        split_table(table, "group", group="x")
    with pytest.raises(ConfigError, match="sum to 1"):
        split_table(table, "random", fractions=[0.5, 0.4])


def test_cli_split_reads_csv_and_writes_checksummed_parquet(tmp_path: Path, capsys) -> None:
    table = _log(200)
    src = tmp_path / "log.csv"
    pacsv.write_csv(table, src)
    out = tmp_path / "out"
    args = [str(src), "--out", str(out), "--by", "leave-last-out", "--user", "user"]
    assert main(["split", *args, "--time", "ts", "--item", "item"]) == 0
    assert "test:" in capsys.readouterr().out
    parts = {p: pq.read_table(out / f"{p}.parquet") for p in ("train", "test")}
    assert sum(t.num_rows for t in parts.values()) == 200
    # pages carry CRC checksums: a flipped byte in a data page is caught on read
    path = out / "train.parquet"
    pq.read_table(path, page_checksum_verification=True)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="CRC checksum"):
        pq.read_table(path, page_checksum_verification=True)
    again = split_files(
        src, tmp_path / "again", "leave-last-out", user="user", time="ts", item="item"
    )
    assert again == {k: t.num_rows for k, t in parts.items()}


def test_csv_split_keeps_ids_above_int64_and_zero_padded_ids_distinct(tmp_path: Path) -> None:
    # Arrow infers these as doubles (all three become 1.8446744073709552e+19) and "007" as 7
    src = tmp_path / "log.csv"
    src.write_text(
        "user,ts,item,q,score\n"
        "18446744073709551615,1,10,007,0.5\n18446744073709551615,2,11,7,1.5\n"
        "18446744073709551614,1,12,007,0.25\n18446744073709551614,2,13,8,1\n"
        "18446744073709551613,1,14,9,2\n18446744073709551613,2,15,10,3\n"
    )
    split_files(src, tmp_path / "llo", "leave-last-out", user="user", time="ts", item="item")
    test = pq.read_table(tmp_path / "llo" / "test.parquet")
    assert test.column("user").type == pa.string()
    assert sorted(test.column("user").to_pylist()) == [
        "18446744073709551613",
        "18446744073709551614",
        "18446744073709551615",
    ]
    assert sorted(test.column("item").to_pylist()) == [11, 13, 15]  # lossless ints stay int64
    assert test.column("score").type == pa.float64()  # real floats keep inference
    split_files(src, tmp_path / "grp", "group", group="q", fractions=[0.5, 0.5])
    parts = [pq.read_table(p) for p in sorted((tmp_path / "grp").glob("*.parquet"))]
    values = [v for t in parts for v in t.column("q").to_pylist()]
    assert sorted(values) == ["007", "007", "10", "7", "8", "9"]


@pytest.mark.skipif(not (DATA / "ml_latest_small").is_dir(), reason="shared data absent")
def test_movielens_protocols_reproduce_the_readme_counts(tmp_path: Path) -> None:
    ratings = DATA / "ml_latest_small" / "ratings.parquet"
    rows = split_files(
        ratings, tmp_path / "t", "time", time="timestamp", tiebreak=["userId", "movieId"]
    )
    assert rows == {"train": 80668, "test": 20168}  # README protocol 2
    rows = split_files(
        ratings, tmp_path / "l", "leave-last-out", user="userId", time="timestamp", item="movieId"
    )
    assert rows["test"] == 610  # README protocol 1: one test item per user


def test_cli_split_reads_a_hive_text_table(tmp_path: Path, capsys) -> None:
    """``--csv`` takes a run config's ``data.csv`` fields: a Hive text table (^A fields,
    ``\\N`` nulls, suffix-less files) split by user keeps each user's rows together."""
    table = tmp_path / "tbl"
    table.mkdir()
    lines = [f"u{i % 5}\x01{i}\x01" + ("\\N" if i % 4 == 0 else f"{i / 2}") for i in range(40)]
    (table / "000000_0").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (table / "_SUCCESS").write_text("")
    out = tmp_path / "out"
    argv = ["split", str(table), "--format", "csv", "--out", str(out), "--by", "group"]
    argv += ["--group", "user", "--csv", "{layout: hive, column_names: [user, item, score]}"]
    assert main(argv) == 0
    parts = {p: pq.read_table(out / f"{p}.parquet") for p in ("train", "test")}
    assert sum(t.num_rows for t in parts.values()) == 40
    users = [set(t.column("user").to_pylist()) for t in parts.values()]
    assert not users[0] & users[1]
    scores = pa.concat_tables(parts.values()).column("score")
    assert scores.null_count == 10 and pa.types.is_floating(scores.type)  # \N is null
    lines[3] = "\\N\x013\x011.5"  # a null user: named, not a user called "\N"
    (table / "000000_0").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(argv) != 0
    assert "column 'user', row 3: null group value" in capsys.readouterr().err
    assert main([*argv[:-1], "{layout: excel}"]) != 0
    assert "--csv.layout: Input should be 'none', 'criteo' or 'hive'" in capsys.readouterr().err


def test_split_reads_partition_folders_as_columns(tmp_path: Path) -> None:
    """A Spark-partitioned log (``dt=.../part-0.parquet``, no ``dt`` in the files) splits by
    its partition date: the later day tests."""
    for day, n in ((20240101, 30), (20240102, 10)):
        (tmp_path / f"dt={day}").mkdir()
        pq.write_table(
            pa.table({"user": [f"u{i}" for i in range(n)]}),
            tmp_path / f"dt={day}" / "part-0.parquet",
        )
    out = tmp_path / "out"
    argv = ["split", str(tmp_path), "--out", str(out), "--by", "time", "--time", "dt"]
    assert main([*argv, "--fractions", "0.75", "0.25"]) == 0
    test = pq.read_table(out / "test.parquet")
    assert test.column("dt").to_pylist() == [20240102] * 10
    assert read_input(tmp_path, columns=["dt", "user"]).column_names == ["dt", "user"]


@pytest.mark.parametrize(
    "texts",
    [
        ["09 13, 2009", "01 02, 2010", "12 31, 2008", "1 5, 2010"],  # Amazon's reviewTime
        ["13/09/2009", "02/01/2010", "31/12/2008", "05/01/2010"],  # day first: a day over 12
        ["Sep 13, 2009", "Jan 2, 2010", "Dec 31, 2008", "Jan 5, 2010"],
        [
            "2009-09-13T10:00:00Z",
            "2010-01-02T00:00:00+01:00",
            "2008-12-31T23:59:00Z",
            "2010-01-05T00:00:00Z",
        ],
    ],
)
def test_time_split_orders_dates_written_as_text_by_date(texts: list[str]) -> None:
    """As text ``09 13, 2009`` sorts after ``01 02, 2010``; the split reads it as a date."""
    table = pa.table({"t": texts, "x": [0, 1, 2, 3]})
    parts = split_by_time(table, "t", [0.5, 0.5])
    assert parts["train"].tolist() == [0, 2] and parts["test"].tolist() == [1, 3]
