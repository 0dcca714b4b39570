"""The MovieLens CTR recipe: quantile transform, its boundaries, and the prepare step's layout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis.config import DataConfig, validate
from recis.errors import ConfigError, DataError
from recis.features import DenseFeature, LabelSpec, Schema
from recis.io.convert import to_batch
from recis.io.quantiles import boundaries_from_files, quantile_boundaries

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recipes" / "movielens_ctr"


def _load(path: Path):
    """A script that is not a package module (the recipe's prepare step, a benchmark)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _prepare_module():
    return _load(RECIPE / "prepare.py")


def test_quantile_transform_maps_to_bucket_fraction() -> None:
    feat = DenseFeature(name="x", transform="quantile", boundaries=[1.0, 10.0, 100.0], fill=0.5)
    table = pa.table({"x": [0.0, 1.0, 5.0, 10.0, 1000.0, None], "y": [0.0] * 6})
    batch = to_batch(table, Schema(dense=[feat], labels=[LabelSpec(name="y")]))
    # bucket = number of boundaries <= x, over 3; the null is filled with 0.5 first
    want = [0.0, 1 / 3, 1 / 3, 2 / 3, 1.0, 0.0]
    np.testing.assert_allclose(batch.dense[:, 0].numpy(), want, rtol=1e-6)


def test_quantile_transform_needs_increasing_boundaries() -> None:
    raw = {"schema": {"dense": [{"name": "x", "transform": "quantile"}]}}
    with pytest.raises(ConfigError, match="schema.dense.0: .*x: transform quantile needs bound"):
        validate(DataConfig, raw)
    raw["schema"]["dense"][0]["boundaries"] = [1.0, 1.0, 2.0]
    with pytest.raises(ConfigError, match="not strictly increasing"):
        validate(DataConfig, raw)


def test_quantile_boundaries(tmp_path: Path) -> None:
    assert quantile_boundaries(np.arange(100.0), 4) == [24.75, 49.5, 74.25]
    # NaN and nulls ignored, ties collapse
    assert quantile_boundaries(np.array([np.nan, 0, 0, 0, 0, 0, 0, 5]), 4) == [0.0]
    assert quantile_boundaries(pa.array([1.0, None, 3.0]), 2) == [2.0]
    pq.write_table(pa.table({"a": np.arange(100.0), "b": np.ones(100)}), tmp_path / "t.parquet")
    got = boundaries_from_files(tmp_path, ["a", "b"], buckets=4)
    assert got == {"a": [24.75, 49.5, 74.25], "b": [1.0]}
    with pytest.raises(DataError, match="column 'c'"):
        boundaries_from_files(tmp_path, ["c"])


def _tiny_movielens(src: Path) -> None:
    """Ten ratings of 3 users on 4 movies; timestamps chosen to test strict causality."""
    #            user movie rating ts
    rows = [
        (1, 10, 5.0, 100),
        (1, 20, 2.0, 200),
        (2, 10, 4.0, 200),  # same second as user 1's second rating
        (1, 30, 4.5, 300),
        (2, 30, 1.0, 300),
        (3, 10, 3.0, 400),
        (1, 40, 4.0, 500),
        (2, 20, 5.0, 600),
        (3, 40, 4.0, 700),
        (1, 10, 4.0, 800),  # a re-rating: history holds the movie again
    ]
    u, m, r, t = (list(c) for c in zip(*rows))
    order = np.lexsort((m, u))  # stored by user then movie, as the real file
    pq.write_table(
        pa.table(
            {
                "userId": pa.array(np.array(u)[order], pa.int64()),
                "movieId": pa.array(np.array(m)[order], pa.int64()),
                "rating": np.array(r)[order],
                "timestamp": pa.array(np.array(t)[order], pa.int64()),
            }
        ),
        src / "ratings.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "movieId": pa.array([10, 20, 30, 40], pa.int64()),
                "title": ["A (1995)", "B (2001)", "No year", "D (1970) "],
                "genres": ["Comedy|Drama", "Action", "(no genres listed)", "Drama"],
            }
        ),
        src / "movies.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "userId": pa.array([2, 3, 1], pa.int64()),
                "movieId": pa.array([10, 10, 40], pa.int64()),
                "tag": [" Funny", "classic", "slow"],
                "timestamp": pa.array([150, 400, 900], pa.int64()),
            }
        ),
        src / "tags.parquet",
    )


def test_prepare_writes_documented_layout(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _tiny_movielens(src)
    stats = _prepare_module().prepare(src, out)
    # 10 rows: 8 train part (80%), of which the last 10% (int(0.9 * 8) = 7) -> 7 train, 1 valid
    assert stats["rows"] == {"train": 7, "valid": 1, "test": 2}
    parts = {s: pq.read_table(out / f"{s}.parquet") for s in ("train", "valid", "test")}
    schema = parts["train"].schema
    assert schema.field("genres").type == pa.list_(pa.string())
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("hist_movies").type == pa.list_(pa.int64())
    assert schema.field("hist_genres").type == pa.list_(pa.string())
    assert schema.field("liked_genres").type == pa.list_(pa.string())
    assert schema.field("user_id").type == pa.int64()
    assert schema.field("like").type == pa.float64()
    rows = [r for s in ("train", "valid", "test") for r in parts[s].to_pylist()]
    # protocol 2 order: (timestamp, userId, movieId)
    assert [(r["timestamp"], r["user_id"]) for r in rows] == sorted(
        (r["timestamp"], r["user_id"]) for r in rows
    )
    assert [r["like"] for r in rows] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    by = {(r["user_id"], r["timestamp"]): r for r in rows}
    last = by[(1, 800)]
    assert last["hist_movies"] == [10, 20, 30, 40]
    assert last["hist_liked"] == [10, 30, 40]
    assert last["user_count"] == 4.0
    assert last["days_since_prev"] == pytest.approx(300 / 86400)
    assert last["genres"] == ["Comedy", "Drama"]
    # the histories' genres, movie by movie in the history's order (30 has none listed)
    assert last["hist_genres"] == ["Comedy", "Drama", "Action", "(no genres listed)", "Drama"]
    assert last["liked_genres"] == ["Comedy", "Drama", "(no genres listed)", "Drama"]
    # strictly earlier: user 1 at t=300 does not see movie 30 (rated at t=300 by both users)
    assert by[(1, 300)]["hist_genres"] == ["Comedy", "Drama", "Action"]
    assert by[(1, 300)]["liked_genres"] == ["Comedy", "Drama"]  # 20 was rated 2.0
    assert by[(2, 300)]["hist_genres"] == ["Comedy", "Drama"]
    assert last["tags"] == ["funny", "classic"]  # lowercased, trimmed, the later tag excluded
    assert last["movie_count"] == 3.0  # users 1, 2, 3 rated movie 10 before t=800
    # strictly earlier only: user 2's rating at t=200 does not see user 1's at t=200
    second = by[(2, 200)]
    assert second["hist_movies"] == [] and second["user_count"] == 0.0
    assert second["hist_genres"] == [] and second["liked_genres"] == []
    assert second["movie_count"] == 1.0 and second["tags"] == ["funny"]
    assert second["days_since_prev"] is None  # no earlier rating: null, the config fills it
    # smoothed rates: prior = train like rate (4/7), strength 10
    prior = 4 / 7
    assert last["user_like_rate"] == pytest.approx((3 + 10 * prior) / (4 + 10))
    assert by[(1, 300)]["year"] is None  # "No year"
    assert by[(1, 500)]["year"] == 1970.0  # trailing space in the title
    assert set(stats["quantile_boundaries"]) >= {"user_count", "movie_count", "year"}


def test_history_genres_follow_the_window_and_skip_unknown_movies() -> None:
    """``_genres_of``: each row's movies' genres in the row's order; a movie missing from the
    catalogue adds nothing; an empty row stays empty."""
    genres_of = _prepare_module()._genres_of
    window = pa.ListArray.from_arrays(pa.array([0, 3, 3, 5]), pa.array([20, 99, 10, 10, 20]))
    movie_ids = np.array([10, 20])  # sorted, as prepare passes them
    lists = pa.array([["Drama", "War"], ["Comedy"]], pa.list_(pa.string()))
    got = genres_of(window, movie_ids, lists).to_pylist()
    assert got == [["Comedy", "Drama", "War"], [], ["Drama", "War", "Comedy"]]


def test_benchmark_skips_without_the_shared_data(tmp_path: Path) -> None:
    mod = _load(ROOT / "benchmarks" / "real_data_ctr.py")
    out = mod.run(tmp_path / "no_data", tmp_path / "work")
    assert set(out) == {"skipped"} and "ratings.parquet" in out["skipped"]


def test_earlier_fold_is_the_same_size_slice_one_period_before(tmp_path: Path) -> None:
    """Fold 2 validates on the train part's last ``len(valid)`` rows and trains on the rest;
    fold 1 is the recipe's split; fold 3 keeps valid and trains on the train part's first
    70% (a gap between them); no fold folder holds a test file."""
    mod = _load(ROOT / "benchmarks" / "ctr_folds.py")
    train = pa.table({"timestamp": [1, 2, 2, 3, 5, 8, 9], "like": [0.0, 1, 0, 1, 1, 0, 1]})
    head, tail = mod.earlier_fold(train, 3)
    assert head.column("timestamp").to_pylist() == [1, 2, 2, 3]
    assert tail.column("timestamp").to_pylist() == [5, 8, 9]
    with pytest.raises(ValueError, match="timestamp order"):
        mod.earlier_fold(pa.table({"timestamp": [1, 3, 2]}), 1)
    with pytest.raises(ValueError, match="valid_rows 7"):
        mod.earlier_fold(train, 7)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pq.write_table(train, prepared / "train.parquet")
    pq.write_table(pa.table({"timestamp": [10, 11], "like": [1.0, 0]}), prepared / "valid.parquet")
    pq.write_table(pa.table({"timestamp": [12], "like": [1.0]}), prepared / "test.parquet")
    folds = mod.write_folds(prepared, tmp_path / "folds")
    assert len(folds) == 3
    fold1, fold2, fold3 = folds
    for fold in folds:
        assert sorted(p.name for p in fold.iterdir()) == ["train.parquet", "valid.parquet"]
    assert pq.read_table(fold1 / "valid.parquet").column("timestamp").to_pylist() == [10, 11]
    assert pq.read_table(fold2 / "train.parquet").column("timestamp").to_pylist() == [1, 2, 2, 3, 5]
    assert pq.read_table(fold2 / "valid.parquet").column("timestamp").to_pylist() == [8, 9]
    assert pq.read_table(fold3 / "train.parquet").column("timestamp").to_pylist() == [1, 2, 2, 3]
    assert pq.read_table(fold3 / "valid.parquet").column("timestamp").to_pylist() == [10, 11]
    with pytest.raises(ValueError, match="keep 0.1: leaves 0 of 7"):
        mod.gap_fold(train, train, keep=0.1)
    out = mod.compare("hhft", [], 1, tmp_path / "no_data", tmp_path / "work")
    assert set(out) == {"skipped"} and "ratings.parquet" in out["skipped"]


def test_benchmark_plot_keeps_the_curves_of_families_not_run(tmp_path: Path) -> None:
    """``real_data.py --only ctr`` replaces the CTR curves and keeps the relevance ones that
    an earlier run left in the JSON beside the plot."""
    mod = _load(ROOT / "benchmarks" / "real_data.py")
    path = tmp_path / "auc.json"
    first = {"ctr/dlrm": [0.7, 0.71], "relevance/deepbow": [0.6, 0.65]}
    assert mod.merged_history(first, path) == first
    second = mod.merged_history({"ctr/hhft": [0.8]}, path)
    assert second == {"ctr/hhft": [0.8], "relevance/deepbow": [0.6, 0.65]}
    assert mod.merged_history({}, path) == second


def test_benchmark_goals_on_medians_only_when_seeds_ran() -> None:
    """One run's goals always; the ``_median`` goals only when ``--ctr-seeds`` gave medians."""
    mod = _load(ROOT / "benchmarks" / "real_data.py")
    one = {"ctr_lr_auc": 0.66, "dlrm_auc": 0.7965, "deepfm_auc": 0.7978, "hhft_auc": 0.7996}
    got = mod.goals(dict(one))
    assert got == {
        "goal_dlrm_ge_lr_plus_0.01": True,
        "goal_hhft_ge_dlrm_plus_0.003": True,
        "goal_deepfm_ge_lr": True,
    }
    medians = {"dlrm_auc_median": 0.7990, "deepfm_auc_median": 0.65, "hhft_auc_median": 0.7995}
    got = mod.goals({**one, **medians})
    assert got["goal_hhft_ge_dlrm_plus_0.003_median"] is False  # 0.0005 above, not 0.003
    assert got["goal_dlrm_ge_lr_plus_0.01_median"] is True
    assert got["goal_deepfm_ge_lr_median"] is False
    assert got["goal_hhft_ge_dlrm_plus_0.003"] is True


def test_recipe_configs_load() -> None:
    """The shipped configs validate; the quantile boundaries in them are increasing."""
    from recis.config import load_config

    for name in ("dlrm", "deepfm", "hhft"):
        cfg = load_config(RECIPE / f"{name}.yaml")
        assert cfg.train.early_stopping is not None and cfg.train.early_stopping.restore_best
        assert cfg.train.eval_each_epoch
        assert any(f.transform == "quantile" for f in cfg.data.schema_.dense)


def test_each_recipe_trains_on_a_prepared_log(tmp_path: Path) -> None:
    """The shipped configs train (2 epochs, early stopping, restore) on prepare.py's output."""
    from recis.config import load_config
    from recis.train import runner

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _tiny_movielens(src)
    rng = np.random.default_rng(0)
    n = 400  # a bigger log with the same schema: both classes in valid
    pq.write_table(
        pa.table(
            {
                "userId": pa.array(rng.integers(1, 30, n), pa.int64()),
                "movieId": pa.array(rng.choice([10, 20, 30, 40], n), pa.int64()),
                "rating": rng.integers(1, 11, n) / 2.0,
                "timestamp": pa.array(np.sort(rng.integers(0, 10**6, n)), pa.int64()),
            }
        ),
        src / "ratings.parquet",
    )
    _prepare_module().prepare(src, out)
    for name in ("dlrm", "deepfm", "hhft"):
        cfg = load_config(
            RECIPE / f"{name}.yaml",
            [
                f"data.train={out / 'train.parquet'}",
                f"data.eval={out / 'valid.parquet'}",
                f"run_dir={tmp_path / name}",
                "data.batch_size=64",
                "train.epochs=2",
                "train.progress=false",
                "train.tensorboard=false",
                "threads=1",
            ],
        )
        trainer, _ = runner.build(cfg)
        result = trainer.fit()
        assert 0.0 <= result["like/auc"] <= 1.0 and result["best_epoch"] in (1, 2)


def _dense_norm_models():
    """DLRM, DeepFM and HHFT with ``dense_norm`` (and ``wide_dense`` where it exists), no
    dropout, on 2 ids and 3 dense columns; and a batch of 8 rows."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recis.config import TableConfig
    from recis.features import SparseFeature
    from recis.io.batch import Batch
    from recis.models import DLRM, HHFT, DeepFM, DeepFMConfig, DLRMConfig, HHFTConfig

    schema = Schema(
        dense=[DenseFeature(name=f"x{i}") for i in range(3)],
        sparse=[SparseFeature(name=n) for n in "ab"],
        labels=[LabelSpec(name="like")],
    )
    tables = [TableConfig(name=n, dim=4, capacity=16) for n in "ab"]
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    blocks = [
        {"name": "a", "sparse": ["a"], "dense": ["x0", "x1"]},
        {"name": "b", "sparse": ["b"], "dense": ["x2"]},
    ]
    models = {
        "dlrm": DLRM(
            DLRMConfig(
                tables=tables, bottom_mlp=[8, 4], top_mlp=[8], dense_norm=True, wide_dense=True
            ),
            schema,
            cpu,
        ),
        "deepfm": DeepFM(DeepFMConfig(tables=tables, dnn=[8], dense_norm=True), schema, cpu),
        "hhft": HHFT(
            HHFTConfig(tables=tables, blocks=blocks, d_model=8, dense_norm=True, wide_dense=True),
            schema,
            cpu,
        ),
    }

    def batch(d: torch.Tensor) -> Batch:
        b = d.shape[0]
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["a", "b"],
            values=torch.arange(2 * b) % 5,
            lengths=torch.ones(2 * b, dtype=torch.int64),
        )
        return Batch(sparse=kjt, dense=d, labels={"like": torch.zeros(b)})

    return models, batch, torch.rand(8, 3)


def test_dense_norm_makes_the_models_blind_to_the_dense_scale() -> None:
    """With ``dense_norm``, rescaling and shifting a dense column (a count in thousands, a
    rating around 3.5) leaves the training-mode logits unchanged; without it they move."""
    import torch

    models, batch, dense = _dense_norm_models()
    moved = dense * torch.tensor([1000.0, 0.5, 2.0]) + torch.tensor([5.0, -3.0, 3.5])
    for name, model in models.items():
        model.train()
        model(batch(dense))  # gives the ids rows
        before = model(batch(dense))["like"]
        after = model(batch(moved))["like"]
        # batch norm's eps (1e-5 added to the variance) weighs differently on the rescaled
        # column: ~3e-4 apart at these weights, against 20 to 300 without the norm
        torch.testing.assert_close(after, before, atol=2e-3, rtol=0.0, msg=name)
        model.dense_norm = torch.nn.Identity()  # the same weights without the norm
        assert (model(batch(moved))["like"] - before).abs().max() > 1.0, name


def test_dense_norm_trains_on_a_one_row_batch_and_wide_term_adds_to_the_logit() -> None:
    """A last training batch of one row is normalised with the running statistics (batch norm
    alone fails on it); ``wide_dense`` adds a linear map of the normalised dense values."""
    import torch

    models, batch, dense = _dense_norm_models()
    for name, model in models.items():
        model.train()
        model(batch(dense))
        one = model(batch(dense[:1]))["like"]
        assert one.shape == (1,) and torch.isfinite(one).all(), name
    for name in ("dlrm", "hhft"):
        model = models[name].eval()
        with_wide = model(batch(dense))["like"]
        wide = model.wide(model.dense_norm(dense))[:, 0]
        assert wide.abs().min() > 0, name
        model.wide = None
        torch.testing.assert_close(with_wide - model(batch(dense))["like"], wide, msg=name)
