"""Alembic migrations of the identity store's schema (``faceid.engine.store.migrate`` runs them)."""
