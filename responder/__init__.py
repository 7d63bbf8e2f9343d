"""responder: a self-hosted email auto-responder and newsletter server built around trust layers."""

__version__ = "0.1.0"
