"""The HTTP API (FastAPI): events from the product, approvals and tasks for CSMs, runs and playbooks for ops."""
