"""Ingestion, validation and publishing of H3-keyed tables for mora."""
