"""Adapters for the forges' CI jobs (run as ``python -m modelshelf.ci.gitlab``)."""
