"""Alembic migrations of the noetl schema (installed as `projector.migrations`)."""
