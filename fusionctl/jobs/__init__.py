"""What each subcommand does, on dataclass configs; commands/ only adapts Hydra to these."""
