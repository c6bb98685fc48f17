"""Peer test suites (ONNX backend tests, Keras' own tests) imported as ordinary spec files:
`conformance import onnx|keras` (`importers`)."""
