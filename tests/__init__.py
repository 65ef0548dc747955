"""The test suite, laid out like the package (plus e2e/ and helpers/)."""
