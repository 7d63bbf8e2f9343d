"""HTTP: the plumbing every route shares, the public pages and forms, the JSON API under
/api/v1 and the admin UI under /admin/."""
