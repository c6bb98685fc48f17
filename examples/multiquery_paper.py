"""The multi-query paper's TensorFlow functions, transcribed.

Noam Shazeer, "Fast Transformer Decoding: One Write-Head is All You Need" (2019),
https://arxiv.org/abs/1911.02150, sections 2.2 and 3. The listings are kept as printed except
for four errata, each marked `# erratum:` (the printed code does not run as is):
`tf.softmax` is `tf.nn.softmax`; the incremental function reads an undefined `M` where it
means `x`, appends to the caches on axis 2 where the [b, m, k] caches grow on axis 1, and
projects an undefined `O` where it means `o`.

There is no scale 1/sqrt(k) and there are no biases: the paper omits both.
"""

import tensorflow as tf


def MultiheadAttentionBatched(X, M, mask, P_q, P_k, P_v, P_o):  # noqa: N802, N803
    """Multi-head Attention.

    X [b, n, d], M [b, m, d], mask [b, h, n, m], P_q [h, d, k], P_k [h, d, k], P_v [h, d, v],
    P_o [h, d, v] -> Y [b, n, d]
    """
    Q = tf.einsum("bnd,hdk->bhnk", X, P_q)  # noqa: N806
    K = tf.einsum("bmd,hdk->bhmk", M, P_k)  # noqa: N806
    V = tf.einsum("bmd,hdv->bhmv", M, P_v)  # noqa: N806
    logits = tf.einsum("bhnk,bhmk->bhnm", Q, K)
    weights = tf.nn.softmax(logits + mask)  # erratum: tf.softmax
    O = tf.einsum("bhnm,bhmv->bhnv", weights, V)  # noqa: N806
    Y = tf.einsum("bhnv,hdv->bnd", O, P_o)  # noqa: N806
    return Y


def MultiqueryAttentionBatched(X, M, mask, P_q, P_k, P_v, P_o):  # noqa: N802, N803
    """Multi-Query Attention.

    X [b, n, d], M [b, m, d], mask [b, h, n, m], P_q [h, d, k], P_k [d, k], P_v [d, v],
    P_o [h, d, v] -> Y [b, n, d]
    """
    Q = tf.einsum("bnd,hdk->bhnk", X, P_q)  # noqa: N806
    K = tf.einsum("bmd,dk->bmk", M, P_k)  # noqa: N806
    V = tf.einsum("bmd,dv->bmv", M, P_v)  # noqa: N806
    logits = tf.einsum("bhnk,bmk->bhnm", Q, K)
    weights = tf.nn.softmax(logits + mask)  # erratum: tf.softmax
    O = tf.einsum("bhnm,bmv->bhnv", weights, V)  # noqa: N806
    Y = tf.einsum("bhnv,hdv->bnd", O, P_o)  # noqa: N806
    return Y


def MultiquerySelfAttentionIncremental(x, prev_K, prev_V, P_q, P_k, P_v, P_o):  # noqa: N802, N803
    """Multi-query Self-Attention (one step).

    x [b, d], prev_K [b, m, k], prev_V [b, m, v], P_q [h, d, k], P_k [d, k], P_v [d, v],
    P_o [h, d, v] -> y [b, d], new_K [b, m+1, k], new_V [b, m+1, v]
    """
    q = tf.einsum("bd,hdk->bhk", x, P_q)
    K = tf.concat(  # noqa: N806
        [prev_K, tf.expand_dims(tf.einsum("bd,dk->bk", x, P_k), axis=1)],  # erratum: M, axis=2
        axis=1,  # erratum: axis=2
    )
    V = tf.concat(  # noqa: N806
        [prev_V, tf.expand_dims(tf.einsum("bd,dv->bv", x, P_v), axis=1)],  # erratum: M, axis=2
        axis=1,  # erratum: axis=2
    )
    logits = tf.einsum("bhk,bmk->bhm", q, K)
    weights = tf.nn.softmax(logits)  # erratum: tf.softmax
    o = tf.einsum("bhm,bmv->bhv", weights, V)
    y = tf.einsum("bhv,hdv->bd", o, P_o)  # erratum: O
    return y, K, V
