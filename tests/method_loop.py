"""A method's round protocol driven in plain Python, for tests that need thousands of rounds or a block the
driver cannot build: client step -> sums over the block -> server step, with in-round queries."""
import numpy as np

from mpifed.algorithms.base import Aggregate, Query
from mpifed.rng import ClientStreams


def aggregate(uplink, n: int) -> Aggregate:
    fields = {k: np.asarray(v).sum(axis=0) for k, v in uplink.fields.items()}
    grad = np.asarray(uplink.grad).sum(axis=0) if uplink.grad is not None else None
    return Aggregate(n, float(np.sum(uplink.loss)), grad, float(np.sum(uplink.value_bits)),
                     float(np.sum(uplink.index_bits)), fields, participants=n)


def rounds(method, params, block, x0, count: int, seed: int = 0, on_server=None):
    """The iterates x^0..x^count of ``method`` on one block holding every client; ``on_server(k, state, agg)``
    sees each round's first aggregate and the server state it is applied to."""
    ids = np.arange(block.n)
    state, init = method.client_init(params, block, x0, ClientStreams(seed, ids, -1))
    server = method.server_init(params, aggregate(init, block.n) if init is not None else None, x0)
    xs = [np.array(x0, dtype=np.float64)]
    for k in range(count):
        streams, x = ClientStreams(seed, ids, k), xs[-1]
        state, up = method.client_step(params, block, state, x, streams)
        agg = aggregate(up, block.n)
        if on_server is not None:
            on_server(k, server, agg)
        out = method.server_step(params, server, x, agg)
        while isinstance(out, Query):
            state, up = method.client_query(params, block, state, out.point, streams)
            out = method.server_resume(params, out.state, x, aggregate(up, block.n))
        server, x_next, _ = out
        xs.append(np.array(x_next))
    return xs
