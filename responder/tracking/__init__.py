"""Public HTTP: subscribe, confirm, open, click, unsubscribe."""
