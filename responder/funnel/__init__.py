"""The funnel's services: layers, sequences and enrollments, the stepper and the sweep,
triggered sequences, newsletters, referrals, and recording an event with what follows it.
They read the inputs of ``core``'s decisions from the database and write the outcomes."""
