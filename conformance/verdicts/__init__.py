"""From an adapter's answer to a verdict: errors against the reference (`compare`), the
tolerance policy (`tolerance`), declared divergences (`divergences`), and one (case, adapter,
device) end to end with its result record (`evaluate`).
"""
