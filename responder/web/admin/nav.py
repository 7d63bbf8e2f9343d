"""The admin UI's navigation: one entry per area. A new area is a page module under
``responder/web/admin/pages/`` with a ``routes`` table and a ``NAV`` entry, listed in ``PAGES``
of ``responder/web/admin/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NavItem:
    title: str
    path: str
    order: int  # position in the menu, small first
