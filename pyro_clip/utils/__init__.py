"""Small helpers with no pyro_clip dependencies: atomic I/O, progress bars, seeding, close
matches of mistyped names."""
