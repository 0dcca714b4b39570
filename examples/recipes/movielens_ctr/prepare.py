"""MovieLens latest-small -> a CTR click log in the layout recis reads (train/valid/test parquet).

Usage::

    python examples/recipes/movielens_ctr/prepare.py [SRC] [OUT]

``SRC`` defaults to ``../shared/data/ml_latest_small`` (from the project root) and ``OUT``
to ``data/movielens_ctr``. pyarrow and numpy only.

Protocol 2 of the dataset's README: label ``like = rating >= 4``; all ratings sorted by
(timestamp, userId, movieId); the first 80% train, the last 20% test. The last 10% (by time)
of the train part is written as ``valid.parquet`` (early stopping and every other choice
look at it, never at the test part); ``train.parquet`` is the rest.

Every feature of a row uses only the log strictly before the row's timestamp (what a
serving system knows when the impression happens), so train, valid and test rows are
built the same way:

=====================  ==================  ==============================================
column                 type                what
=====================  ==================  ==============================================
user_id, movie_id      int64               raw ids
genres                 list<string>        the movie's genres (multi-hot)
tags                   list<string>        the last 10 tags any user gave the movie before
hour, weekday          int64               UTC hour and day of week of the rating
hist_movies            list<int64>         the user's last 50 rated movies, oldest first
hist_liked             list<int64>         the user's last 50 liked movies, oldest first
hist_genres            list<string>        the genres of the hist_movies, in their order
liked_genres           list<string>        the genres of the hist_liked, in their order
year                   double (null)       release year parsed from the title
movie_age              double (null)       years from release to the rating
days_since_prev        double (null)       days since the user's previous rating
user_count             double              the user's earlier ratings
user_like_rate         double              their like rate, Beta-smoothed to the prior
user_mean_rating       double              their mean rating / 5, smoothed
movie_count            double              the movie's earlier ratings (all users)
movie_like_rate        double              its like rate, smoothed
movie_mean_rating      double              its mean rating / 5, smoothed
like                   double              the label: 1.0 when rating >= 4, else 0.0
timestamp              int64               Unix seconds (for reference; not a feature)
=====================  ==================  ==============================================

The smoothing prior (like rate, mean rating) is that of the train file's rows; strength 10.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recis.io.quantiles import quantile_boundaries

HISTORY = 50  # ids kept per behaviour sequence
TAGS = 10  # tags kept per movie
SMOOTHING = 10.0  # pseudo-count of the Beta / mean priors
TEST_FRACTION = 0.2
VALID_FRACTION = 0.1  # of the train part, its latest rows

DENSE = [
    "year",
    "movie_age",
    "days_since_prev",
    "user_count",
    "user_like_rate",
    "user_mean_rating",
    "movie_count",
    "movie_like_rate",
    "movie_mean_rating",
]
# heavy-tailed columns whose quantile boundaries the configs carry
QUANTILE_COLUMNS = ["year", "movie_age", "days_since_prev", "user_count", "movie_count"]
QUANTILE_BUCKETS = 16


def _key(group: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """One sortable int64 per (group, timestamp): groups < 2^31, timestamps < 2^32."""
    return (group.astype(np.int64) << 32) | ts.astype(np.int64)


def _before(
    keys_sorted: np.ndarray, group: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each query (group, ts): positions in ``keys_sorted`` of the group's first entry and
    of its first entry at or after ``ts``; entries between them are strictly earlier."""
    start = np.searchsorted(keys_sorted, _key(group, np.zeros_like(ts)), side="left")
    stop = np.searchsorted(keys_sorted, _key(group, ts), side="left")
    return start, stop


def _window(start: np.ndarray, stop: np.ndarray, size: int, values: np.ndarray) -> pa.ListArray:
    """Row ``i`` holds ``values[max(start_i, stop_i - size) : stop_i]`` (oldest first)."""
    lo = np.maximum(start, stop - size)
    lengths = stop - lo
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    flat = values[np.repeat(lo, lengths) + within]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _genres_of(
    window: pa.ListArray, movie_ids: np.ndarray, genre_lists: pa.ListArray
) -> pa.ListArray:
    """Row ``i`` holds the genres of the movies of ``window[i]``, flattened in their order
    (oldest movie's genres first); ``genre_lists[j]`` are the genres of ``movie_ids[j]``
    (sorted), a movie missing from the catalogue contributes none."""
    flat = window.values.to_numpy()
    pos = np.minimum(np.searchsorted(movie_ids, flat), len(movie_ids) - 1)
    known = movie_ids[pos] == flat
    per_movie = genre_lists.take(pa.array(pos))
    lengths = np.where(known, pc.list_value_length(per_movie).fill_null(0).to_numpy(), 0)
    token_end = np.concatenate(([0], np.cumsum(lengths)))  # token offset of each movie
    offsets = token_end[window.offsets.to_numpy()].astype(np.int32)
    per_movie = pc.if_else(pa.array(known), per_movie, pa.nulls(len(flat), per_movie.type))
    return pa.ListArray.from_arrays(pa.array(offsets), pc.list_flatten(per_movie))


def _history_stats(
    group: np.ndarray, ts: np.ndarray, label: np.ndarray, rating: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, over the same group's rows strictly earlier: count, like sum, rating sum,
    and the (start, stop) of that range in the group-time order."""
    order = np.lexsort((ts, group))
    keys = _key(group[order], ts[order])
    start, stop = _before(keys, group, ts)
    likes = np.concatenate(([0.0], np.cumsum(label[order])))
    stars = np.concatenate(([0.0], np.cumsum(rating[order])))
    count = (stop - start).astype(np.float64)
    return count, likes[stop] - likes[start], stars[stop] - stars[start], start, stop


def _year(titles: pa.Array) -> np.ndarray:
    """Release year from titles like ``Toy Story (1995)``; NaN when absent."""
    out = np.full(len(titles), np.nan)
    for i, title in enumerate(titles.to_pylist()):
        m = re.search(r"\((\d{4})\)\s*$", (title or "").strip())
        if m:
            out[i] = float(m.group(1))
    return out


def build_rows(src: Path) -> tuple[pa.Table, int, int]:
    """All ratings as feature rows in time order, the number of train rows and of fit rows
    (train minus the validation slice)."""
    ratings = pq.read_table(src / "ratings.parquet")
    movies = pq.read_table(src / "movies.parquet")
    tags = pq.read_table(src / "tags.parquet")
    user = ratings["userId"].to_numpy()
    movie = ratings["movieId"].to_numpy()
    ts = ratings["timestamp"].to_numpy()
    order = np.lexsort((movie, user, ts))  # protocol 2: (timestamp, userId, movieId)
    user, movie, ts = user[order], movie[order], ts[order]
    rating = ratings["rating"].to_numpy()[order]
    label = (rating >= 4.0).astype(np.float64)
    n = len(label)
    n_train = int((1 - TEST_FRACTION) * n)
    n_fit = int((1 - VALID_FRACTION) * n_train)
    prior_like = float(label[:n_fit].mean())
    prior_star = float(rating[:n_fit].mean()) / 5.0

    u_count, u_likes, u_stars, u_start, u_stop = _history_stats(user, ts, label, rating)
    m_count, m_likes, m_stars, _, _ = _history_stats(movie, ts, label, rating)
    a = SMOOTHING

    # the user's behaviour sequences, in the user-time order _history_stats used
    by_user = np.lexsort((ts, user))
    hist_movies = _window(u_start, u_stop, HISTORY, movie[by_user])
    liked = by_user[label[by_user] > 0]
    liked_start, liked_stop = _before(_key(user[liked], ts[liked]), user, ts)
    hist_liked = _window(liked_start, liked_stop, HISTORY, movie[liked])
    prev_ts = np.where(u_stop > u_start, ts[by_user][np.maximum(u_stop - 1, 0)], -1)
    days_since_prev = np.where(prev_ts >= 0, (ts - prev_ts) / 86400.0, np.nan)

    # movie side: genres, year, tags given before the rating
    m_ids = movies["movieId"].to_numpy()
    row_of = {int(m): i for i, m in enumerate(m_ids)}
    idx = np.array([row_of.get(int(m), -1) for m in movie])
    genre_lists = pc.split_pattern(movies["genres"].combine_chunks(), "|")
    genres = genre_lists.take(pa.array(np.where(idx >= 0, idx, 0)))
    genres = pc.if_else(pa.array(idx >= 0), genres, pa.nulls(n, genres.type))
    year = _year(movies["title"].combine_chunks())[np.maximum(idx, 0)]
    year[idx < 0] = np.nan
    rating_year = 1970.0 + ts / (365.2425 * 86400.0)
    movie_age = np.maximum(rating_year - year, 0.0)

    # the genres of the histories' movies: what the user watched / liked, as content
    by_id = np.argsort(m_ids)
    hist_genres = _genres_of(hist_movies, m_ids[by_id], genre_lists.take(pa.array(by_id)))
    liked_genres = _genres_of(hist_liked, m_ids[by_id], genre_lists.take(pa.array(by_id)))

    t_movie, t_ts = tags["movieId"].to_numpy(), tags["timestamp"].to_numpy()
    t_order = np.lexsort((t_ts, t_movie))
    t_start, t_stop = _before(_key(t_movie[t_order], t_ts[t_order]), movie, ts)
    tag_text = pc.utf8_lower(pc.utf8_trim_whitespace(tags["tag"].combine_chunks()))
    tag_values = np.asarray(tag_text.to_pylist(), dtype=object)[t_order]
    tag_lists = _window(t_start, t_stop, TAGS, tag_values)

    seconds = ts % 86400
    table = pa.table(
        {
            "user_id": pa.array(user, pa.int64()),
            "movie_id": pa.array(movie, pa.int64()),
            "genres": genres,
            "tags": tag_lists.cast(pa.list_(pa.string())),
            "hour": pa.array(seconds // 3600, pa.int64()),
            "weekday": pa.array((ts // 86400 + 3) % 7, pa.int64()),  # 0 = Monday
            "hist_movies": hist_movies.cast(pa.list_(pa.int64())),
            "hist_liked": hist_liked.cast(pa.list_(pa.int64())),
            "hist_genres": hist_genres.cast(pa.list_(pa.string())),
            "liked_genres": liked_genres.cast(pa.list_(pa.string())),
            "year": pa.array(year, from_pandas=True),
            "movie_age": pa.array(movie_age, from_pandas=True),
            "days_since_prev": pa.array(days_since_prev, from_pandas=True),
            "user_count": u_count,
            "user_like_rate": (u_likes + a * prior_like) / (u_count + a),
            "user_mean_rating": (u_stars / 5.0 + a * prior_star) / (u_count + a),
            "movie_count": m_count,
            "movie_like_rate": (m_likes + a * prior_like) / (m_count + a),
            "movie_mean_rating": (m_stars / 5.0 + a * prior_star) / (m_count + a),
            "like": label,
            "timestamp": pa.array(ts, pa.int64()),
        }
    )
    return table, n_train, n_fit


def prepare(src: Path, out: Path) -> dict:
    """Write ``train.parquet``, ``valid.parquet``, ``test.parquet`` and ``stats.json`` to ``out``;
    returns the stats (rows per file, like rates, quantile boundaries of the train file)."""
    table, n_train, n_fit = build_rows(Path(src))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": table.slice(0, n_fit),
        "valid": table.slice(n_fit, n_train - n_fit),
        "test": table.slice(n_train),
    }
    stats: dict = {"rows": {}, "like_rate": {}}
    for name, part in parts.items():
        pq.write_table(part, out / f"{name}.parquet", write_page_checksum=True)
        stats["rows"][name] = part.num_rows
        stats["like_rate"][name] = round(float(pc.mean(part["like"]).as_py()), 4)
    train = parts["train"]
    stats["quantile_boundaries"] = {
        c: quantile_boundaries(train[c], QUANTILE_BUCKETS) for c in QUANTILE_COLUMNS
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def main(argv: list[str]) -> None:
    root = Path(__file__).resolve().parents[3]
    src = Path(argv[0]) if argv else root.parent / "shared" / "data" / "ml_latest_small"
    out = Path(argv[1]) if len(argv) > 1 else root / "data" / "movielens_ctr"
    stats = prepare(src, out)
    print(json.dumps({k: stats[k] for k in ("rows", "like_rate")}))
    print(f"wrote {out}/{{train,valid,test}}.parquet and stats.json")


if __name__ == "__main__":
    main(sys.argv[1:])
