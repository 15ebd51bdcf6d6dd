"""Streamed compile: a model of any size compiled one decoder layer at a time."""
