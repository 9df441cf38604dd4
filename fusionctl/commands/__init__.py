"""One thin Hydra application per subcommand."""
