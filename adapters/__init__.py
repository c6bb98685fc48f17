"""Built-in adapters, installed as `conformance.adapters` (one module per implementation)."""
