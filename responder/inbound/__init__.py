"""Inbound mail: bounces (DSN), complaints (ARF), mailto unsubscribes and replies."""
