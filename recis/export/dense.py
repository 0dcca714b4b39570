"""The dense part of a DLRM as a graph: ``(dense [B, Dd], pooled [B, F, D]) -> logits [B, T]``.

The embedding lookup stays outside the graph (:class:`~recis.export.tables.TableLookup`:
hashed ids and their id -> row map are data, not code); everything after it (dense norm,
bottom MLP, dot interactions, top MLP, wide term) is exported once in one of three formats:

- ``export``: ``torch.export`` (``dense.pt2``), batch dimension dynamic;
- ``torchscript``: ``torch.jit.trace`` (``dense.ts``);
- ``onnx``: ``torch.onnx.export`` (``dense.onnx``), run with onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recis.errors import ConfigError
from recis.models.dlrm import DLRM

FORMATS = ("export", "torchscript", "onnx")
FILES = {"export": "dense.pt2", "torchscript": "dense.ts", "onnx": "dense.onnx"}


class DLRMDense(nn.Module):
    """DLRM's forward after the embedding lookup (the same layers, evaluated the same way).

    Shapes: ``dense`` ``[B, Dd]``, ``pooled`` ``[B, F, D]`` -> logits ``[B, T]``.
    """

    # buffers: row / column of each pair of the interaction's upper triangle
    tri_rows: torch.Tensor
    tri_cols: torch.Tensor

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.dense_norm = model.dense_norm
        self.dense_arch = model.dense_arch
        self.top_arch = model.top_arch
        self.wide = model.wide
        n = len(model.feature_names) + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("tri_rows", rows, persistent=False)
        self.register_buffer("tri_cols", cols, persistent=False)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dense_norm(dense)  # [B, Dd]
        d = self.dense_arch(x)  # [B, D]
        stacked = torch.cat([d[:, None], pooled], dim=1)  # [B, F+1, D]
        dots = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, F+1, F+1]
        inter = dots[:, self.tri_rows, self.tri_cols]  # [B, (F+1)F/2]
        logits = self.top_arch(torch.cat([d, inter], dim=1))  # [B, T]
        if self.wide is not None:
            logits = logits + self.wide(x)
        return logits


def dense_module(model: nn.Module) -> nn.Module:
    """The exportable dense part of ``model`` (DLRM only, for now), in eval mode."""
    if not isinstance(model, DLRM):
        raise ConfigError(
            f"model.name: export supports dlrm; {type(model).__name__} does not export yet"
        )
    return DLRMDense(model).eval()


def save_dense(module: nn.Module, fmt: str, path: Path, example: tuple[torch.Tensor, ...]) -> None:
    """Write ``module`` in format ``fmt`` to ``path``; ``example``: (dense, pooled) inputs."""
    save_graph(module, fmt, path, dict(zip(("dense", "pooled"), example)), "logits")


def save_graph(
    module: nn.Module, fmt: str, path: Path, example: dict[str, torch.Tensor], output: str
) -> None:
    """Write ``module`` (``forward(*example.values()) -> output``) in format ``fmt`` to
    ``path``; the first dimension of every input is the batch (dynamic), the others are
    fixed by ``example``."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    shapes = {name: {0: batch} for name in example}
    args = tuple(example.values())
    with torch.no_grad():
        if fmt == "export":
            ep = torch.export.export(module, args, dynamic_shapes=shapes)
            torch.export.save(ep, str(path))
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, args), str(path))
        elif fmt == "onnx":
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(example),
                output_names=[output],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
            )
        else:
            raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def load_dense(fmt: str, path: Path) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``(dense [B, Dd], pooled [B, F, D]) -> logits [B, T]`` over the saved graph."""
    graph = load_graph(fmt, path, ["dense", "pooled"], "logits")
    return lambda dense, pooled: graph(dense, pooled)


def load_graph(fmt: str, path: Path, inputs: list[str], output: str) -> Callable[..., torch.Tensor]:
    """A function ``(*inputs) -> output`` over a graph saved by :func:`save_graph`."""
    if fmt == "export":
        module = torch.export.load(str(path)).module()
        return lambda *args: module(*args)
    if fmt == "torchscript":
        ts = torch.jit.load(str(path))
        ts.eval()
        return lambda *args: ts(*args)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    # an input the graph does not read (e.g. text ids of a tower without text) is pruned
    used = {i.name for i in sess.get_inputs()}

    def run(*args: torch.Tensor) -> torch.Tensor:
        feeds = {n: a.numpy() for n, a in zip(inputs, args) if n in used}
        (out,) = sess.run([output], feeds)
        return torch.from_numpy(np.asarray(out))

    return run
