"""Templates: compiled once at upload (MJML → HTML), rendered per recipient in a sandbox."""
