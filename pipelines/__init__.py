"""Ingestion, validation and publishing of H3-keyed tables for mora."""

__version__ = "0.1.0"
