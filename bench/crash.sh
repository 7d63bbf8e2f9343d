#!/bin/sh
# Crash safety at length: tests/test_crash.py with more SIGKILLs (default 50; first argument).
# Prints received, unique, duplicates and lost Message-IDs at the SMTP server.
set -eu
cd "$(dirname "$0")/.."
RESPONDER_TEST_KILLS="${1:-50}" exec .venv/bin/pytest -q -s -p no:cacheprovider tests/test_crash.py
