"""The case model and its arrays: what a resolved case is, and the inputs, masks and layouts
every implementation receives.

`case` (Case, Shape, Mask, Dropout; the FEATURES tags), its optional parts `score_terms`,
`rotary` and `kv_cache`; `inputs` (seeded arrays and canonical weights), `masks` (the neutral
mask and its conversions), `layouts` (canonical <-> framework weight layouts), `seeding` and
`dtypes`. Nothing here depends on a later stage.
"""
