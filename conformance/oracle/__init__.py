"""The float64 oracle: what an implementation's answer is held against.

`reference` (the forward pass, a block of query rows at a time), `backward` (analytic
gradients), `dropout` (training-mode dropout, checked statistically, with `stats`), and
`reference_cache` (one reference per case, shared by the adapters of a run).
"""
