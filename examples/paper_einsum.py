"""The multi-query paper's TensorFlow functions (multiquery_paper.py) as a user adapter."""

from conformance import Unsupported
from conformance.adapter_api.plugin import layer_adapter

# The functions take one memory M for keys and values, and model dim d everywhere.
DROP = {"cross-attention", "kv-len", "grouped-query", "kv-input-dims", "output-dim"}


@layer_adapter(name="example.paper-einsum", arrays="tensorflow", add={"decode"}, drop=DROP)
def paper_einsum(query, key, value, p, mask, *, scale, case):  # noqa: ANN001
    """Shazeer 2019's einsum functions, called as printed (the scale folded into P_q)."""
    import tensorflow as tf

    import examples.multiquery_paper as paper

    if p["bq"] is not None:
        raise Unsupported("the paper's functions have no projection biases")
    x, mha = query, p["wk"].shape[0] > 1
    mask = tf.zeros([1, 1, 1, 1], x.dtype) if mask is None else mask
    P_q, P_o = p["wq"] * scale, tf.transpose(p["wo"], (0, 2, 1))
    if mha and case.decode:
        raise Unsupported("the paper lists incremental decoding for multi-query only")
    if mha:
        return paper.MultiheadAttentionBatched(x, x, mask, P_q, p["wk"], p["wv"], P_o)
    P_k, P_v, n = p["wk"][0], p["wv"][0], case.decode.prefix if case.decode else x.shape[1]
    x_n, m = x[:, :n], mask[:, :, :n, :n]  # decoding: the prefix at once, as one batch
    ys = [paper.MultiqueryAttentionBatched(x_n, x_n, m, P_q, P_k, P_v, P_o)]
    K, V = tf.einsum("bmd,dk->bmk", x_n, P_k), tf.einsum("bmd,dv->bmv", x_n, P_v)
    for t in range(n, x.shape[1]):  # then one token at a time, with the K/V cache
        y, K, V = paper.MultiquerySelfAttentionIncremental(x[:, t], K, V, P_q, P_k, P_v, P_o)
        ys.append(y[:, None])
    return tf.concat(ys, axis=1)


ADAPTERS = [paper_einsum]
