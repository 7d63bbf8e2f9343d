"""Sending: the outbox, delivery workers, transports and MIME building."""
