"""Simulated interaction and metrics."""
