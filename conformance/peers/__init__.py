"""Peer test suites (ONNX backend tests, Keras' own tests) imported as ordinary spec files:
`conformance import onnx|keras` (`importers`), one module per suite (`onnx_import`,
`keras_port`), the spec files they write (`spec_writing`) and the reference checked against
the peer's expected outputs (`agreement`)."""
