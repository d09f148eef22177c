"""settings -> service tree: the daemon, its listeners and store services, systemd readiness."""
