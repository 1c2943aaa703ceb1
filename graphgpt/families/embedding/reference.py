"""Embedding rows and their gradient."""
from __future__ import annotations

import numpy as np

from ...numpy_ops.base import reference


@reference("embedding")
def embedding(attrs, table, ids):
    return table[ids]


@reference("embedding_grad")
def embedding_grad(attrs, ids, g):
    out = np.zeros((attrs["rows"], g.shape[-1]), g.dtype)
    np.add.at(out, ids.reshape(-1), g.reshape(-1, g.shape[-1]))
    return out


@reference("one_hot")
def one_hot(attrs, ids):
    return (np.arange(attrs["rows"])[:, None] == ids.reshape(1, -1)).astype(np.float32)


@reference("id_order")
def id_order(attrs, ids):
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(attrs["rows"] + 1))
    return np.concatenate([order, starts]).astype(np.int32)


@reference("embedding_grad_sorted")
def embedding_grad_sorted(attrs, order, g):
    """embedding_grad's sums, each row's gradient rows added in the order of their positions."""
    rows = g.reshape(-1, g.shape[-1])
    n = rows.shape[0]
    ids = np.repeat(np.arange(attrs["rows"]), np.diff(order[n:]))
    out = np.zeros((attrs["rows"], g.shape[-1]), g.dtype)
    np.add.at(out, ids, rows[order[:n]])
    return out
