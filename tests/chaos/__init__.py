"""The fault campaign behind `make chaos` (not part of `make test`)."""
