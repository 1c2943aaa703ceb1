"""Embedding rows gathered by ids, and their gradient: the embedding kernel family."""
from __future__ import annotations

from ...ops.registry import BACKWARD_ONLY, Op, Spec, float_spec, out_dtype, prod, register, require


# ---- embedding: rows of a table gathered by integer ids -------------------------------------
def _emb_infer(attrs, table, ids):
    float_spec(table)
    require(len(table.shape) == 2, f"the table must be 2-D, got {table.shape}")
    require(ids.dtype == "i32", f"ids must be i32, got {ids.dtype}")
    return Spec(ids.shape + table.shape[1:], table.dtype)


def _emb_grad_infer(attrs, ids, g):
    float_spec(g)
    require(ids.dtype == "i32" and g.shape[:-1] == ids.shape, f"ids {ids.shape} do not match {g.shape}")
    return Spec((attrs["rows"], g.shape[-1]), out_dtype(attrs, g.dtype))


register(Op("embedding", "nn", _emb_infer,
            vjp=lambda a, g, out, w, ids: (g.graph.add("embedding_grad", (ids, g), rows=w.shape[0]), None),
            template="embedding"))
register(Op("embedding_grad", "nn", _emb_grad_infer,
            nondiff=BACKWARD_ONLY, template="embedding", stores_any_float=True, scatters_rows=True))


# one_hot(ids): a (rows, ids) matrix of zeros with a one at (id, i) for the i-th id; the embedding
# gradient of a small table is its product with the gradient rows (passes/embedding_grads.py)
def _one_hot_infer(attrs, ids):
    require(ids.dtype == "i32", f"ids must be i32, got {ids.dtype}")
    return Spec((attrs["rows"], prod(ids.shape)), out_dtype(attrs, "f32"))


register(Op("one_hot", "nn", _one_hot_infer, nondiff=BACKWARD_ONLY, template="embedding"))


# id_order(ids): the ids' positions sorted by (id, position), then where each table row's run of
# them starts: one i32 vector of n + rows + 1 (its last entry n). A large table's embedding
# gradient sums each row's gradient rows through it (passes/embedding_grads.py).
def _id_order_infer(attrs, ids):
    require(ids.dtype == "i32", f"ids must be i32, got {ids.dtype}")
    return Spec((prod(ids.shape) + attrs["rows"] + 1,), "i32")


def _sorted_grad_infer(attrs, order, g):
    float_spec(g)
    n = prod(g.shape[:-1])
    require(order.dtype == "i32" and order.shape == (n + attrs["rows"] + 1,),
            f"order {order.shape} is not id_order's of {n} ids and {attrs['rows']} rows")
    return Spec((attrs["rows"], g.shape[-1]), out_dtype(attrs, g.dtype))


register(Op("id_order", "nn", _id_order_infer, nondiff=BACKWARD_ONLY, template="embedding"))
register(Op("embedding_grad_sorted", "nn", _sorted_grad_infer, nondiff=BACKWARD_ONLY, template="embedding",
            stores_any_float=True))
