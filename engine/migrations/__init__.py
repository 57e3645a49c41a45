"""Alembic migrations of the identity store's schema (``faceid.engine.migrate`` runs them)."""
