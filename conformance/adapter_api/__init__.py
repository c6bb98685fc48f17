"""The adapter API: how an implementation is described and called.

`adapter` (Adapter, Declaration, Divergence: one declarative record per implementation),
`plugin` (kernel_adapter / layer_adapter for plain functions), `external` (implementations
that are not Python) and `registry` (built-in adapters, entry points, `module:Class`). The
built-in adapters themselves are adapters/ (installed as conformance.adapters).
"""
