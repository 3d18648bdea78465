"""scorers: one module per backend, registered with @register."""
