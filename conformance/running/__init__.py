"""Running cases: scheduling onto worker processes (`runner`, `worker`), the results files
(`results`, `environment`), what a run prints (`progress`, `summary`, `feature_table`,
`profile`), when it stops and how it exits (`maxfail`, `executed`, `expected`), adapters'
caches (`cache`), and cases as pytest items (`pytest_plugin`).
"""
