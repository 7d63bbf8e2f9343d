"""Public endpoints: the opt-in form, subscribe, confirm, unsubscribe, the preference center and
the enquiry form (the pixel and click redirect live in ``tracking``)."""
