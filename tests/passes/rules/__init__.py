"""Tests of the rewrite rules and matchers in ``smoothrot.passes.rules``, one module each."""
