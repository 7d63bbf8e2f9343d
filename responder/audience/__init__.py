"""The people: opt-in and consent, subscribers as the admin sees them, import and export,
the preference center, suppression of erased addresses, and enquiries."""
