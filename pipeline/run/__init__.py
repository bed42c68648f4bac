"""`thermoscreen run`: the stage threads, their wiring from the config, and the command."""
