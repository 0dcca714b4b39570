"""Synthetic data with known ground truth, written as real parquet files.

:func:`generate_ctr` draws a Criteo-like click log: 13 dense count features
(``I1``..``I13``, ~5% nulls), 26 categorical id features (``C1``..``C26``)
with power-law (Zipf) id frequencies, and a ``label`` drawn from a known
click probability ``p_click`` that has first-order id effects, pairwise
latent-factor interactions between categorical features, dense effects and a
dense x dense interaction. ``p_click`` is stored beside the label, so the
**oracle AUC** (AUC of the true probability on the eval split) bounds what
any model can reach. Everything is deterministic by seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recis.metrics import auc

NUM_DENSE = 13
NUM_SPARSE = 26
LATENT_DIM = 4
_CARDINALITIES = (20, 60, 200, 600, 1500, 3000, 5000)
# pairs of categorical features whose latent factors interact in the true logit
_PAIRS = ((0, 1), (2, 3), (4, 5), (0, 6), (7, 8), (9, 10), (1, 11), (12, 13))


@dataclass
class SyntheticInfo:
    """What a generator wrote, and the best achievable score on it."""

    path: str
    num_train: int
    num_eval: int
    seed: int
    oracle_auc: float | None  # None when the eval split has one class only (no AUC)
    positive_rate: float

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def write(
        cls, path: Path, sizes: tuple[int, int, int], truth: np.ndarray, evals: dict, train: dict
    ) -> SyntheticInfo:
        """The info of data just written under ``path`` (``sizes``: num_train, num_eval,
        seed), saved as ``path/info.json``: the oracle AUC is the AUC of ``truth`` (``[N]``,
        the noise-free score of each eval row) against the eval labels."""
        num_train, num_eval, seed = sizes
        info = cls(
            path=str(path),
            num_train=num_train,
            num_eval=num_eval,
            seed=seed,
            oracle_auc=auc(np.asarray(truth), np.asarray(evals["label"])),
            positive_rate=float(np.asarray(train["label"]).mean()),
        )
        info.save(path / "info.json")
        return info


def dense_names() -> list[str]:
    return [f"I{i + 1}" for i in range(NUM_DENSE)]


def sparse_names() -> list[str]:
    return [f"C{i + 1}" for i in range(NUM_SPARSE)]


class _ClickModel:
    def __init__(self, seed: int, latent_std: float = 0.35, id_scale: float = 1.0) -> None:
        rng = np.random.default_rng([seed, 0xC7])
        self.cards = [_CARDINALITIES[i % len(_CARDINALITIES)] for i in range(NUM_SPARSE)]
        self.zipf_a = 1.1
        self.bias = -1.2
        # informative features have a larger spread of per-id effects; some are pure noise
        scale = rng.choice([0.0, 0.25, 0.5, 0.8], size=NUM_SPARSE, p=[0.25, 0.25, 0.3, 0.2])
        self.id_bias = [rng.normal(0.0, s * id_scale, size=c) for s, c in zip(scale, self.cards)]
        self.latent = [rng.normal(0.0, latent_std, size=(c, LATENT_DIM)) for c in self.cards]
        # ids are a random permutation of frequency ranks, so id order says nothing
        self.perm = [rng.permutation(c) for c in self.cards]
        self.probs = []
        for c in self.cards:
            w = 1.0 / np.arange(1, c + 1) ** self.zipf_a
            self.probs.append(w / w.sum())
        self.dense_w = rng.normal(0.0, 0.3, size=NUM_DENSE)
        self.dense_mu = rng.uniform(0.5, 3.0, size=NUM_DENSE)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {}
        logit = np.full(n, self.bias)
        ids = []
        for f in range(NUM_SPARSE):
            rank = rng.choice(self.cards[f], size=n, p=self.probs[f])
            idx = self.perm[f][rank]
            ids.append(idx)
            cols[f"C{f + 1}"] = idx.astype(np.int64)
            logit += self.id_bias[f][idx]
        for a, b in _PAIRS:
            logit += np.einsum("nd,nd->n", self.latent[a][ids[a]], self.latent[b][ids[b]])
        z = np.empty((n, NUM_DENSE))
        for j in range(NUM_DENSE):
            raw = np.floor(rng.lognormal(self.dense_mu[j], 1.0, size=n))
            z[:, j] = (np.log1p(raw) - self.dense_mu[j]) / 1.0
            col = raw.astype(np.float32)
            col[rng.random(n) < 0.05] = np.nan  # Criteo-like missing counts
            cols[f"I{j + 1}"] = col
        logit += z @ self.dense_w + 0.3 * z[:, 0] * z[:, 1]
        p = 1.0 / (1.0 + np.exp(-logit))
        cols["p_click"] = p.astype(np.float32)
        cols["label"] = (rng.random(n) < p).astype(np.float32)
        return cols


def write_parquet_parts(
    table: pa.Table, out: Path, files: int, row_group_size: int | None = None
) -> None:
    """Split ``table`` into ``files`` contiguous parquet files ``out/part-NNNNN.parquet``.

    Each part is written under a temporary name and renamed, so a crash never
    leaves a half-written part that a reader would take for data.
    """
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        tmp = out / f".part-{i:05d}.parquet.tmp"
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(part, tmp, row_group_size=row_group_size, write_page_checksum=True)
        tmp.replace(out / f"part-{i:05d}.parquet")


def _write_split(cols: dict[str, np.ndarray], out: Path, files: int) -> None:
    order = ["label", *dense_names(), *sparse_names(), "p_click"]
    arrays = []
    for name in order:
        v = cols[name]
        mask = np.isnan(v) if v.dtype.kind == "f" else None
        arrays.append(pa.array(v, mask=mask))
    table = pa.Table.from_arrays(arrays, names=order)
    write_parquet_parts(table, out, files, row_group_size=16384)


def generate_ctr(
    path: str | Path,
    num_train: int = 200_000,
    num_eval: int = 50_000,
    files: int = 4,
    seed: int = 0,
) -> SyntheticInfo:
    """Write ``path/train/*.parquet``, ``path/eval/*.parquet`` and ``path/info.json``.

    Returns the :class:`SyntheticInfo` with the oracle AUC of the eval split.
    """
    path = Path(path)
    model = _ClickModel(seed)
    train = model.sample(num_train, np.random.default_rng([seed, 1]))
    evals = model.sample(num_eval, np.random.default_rng([seed, 2]))
    _write_split(train, path / "train", files)
    _write_split(evals, path / "eval", max(1, files // 2))
    truth = evals["p_click"]  # the true click probability
    return SyntheticInfo.write(path, (num_train, num_eval, seed), truth, evals, train)


def load_info(path: str | Path) -> SyntheticInfo | None:
    """The info of data generated under ``path``, or None if there is none."""
    f = Path(path) / "info.json"
    if not f.exists():
        return None
    return SyntheticInfo(**json.loads(f.read_text()))
