"""Reusable pieces of the test suite (no tests in here): fixtures' helpers and the chaos soak."""
