"""Recipe stages, grouped by what they do; :mod:`.classify` and :mod:`.detect` assemble them into tasks."""
