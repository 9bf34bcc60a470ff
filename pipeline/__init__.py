"""The core of medindex: settings, Celery app, model, sources, schemas, store."""
