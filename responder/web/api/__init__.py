"""The admin JSON API under /api/v1/, guarded by a bearer token."""
