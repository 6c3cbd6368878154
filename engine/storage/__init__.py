"""The engine's own tables and the database they live in."""
