"""Celery tasks: thin wrappers over `pipeline`, one module per queue."""
