"""Serving: a verified model version over HTTP, hot-swapped without dropping requests."""
