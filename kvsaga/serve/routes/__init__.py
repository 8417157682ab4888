"""The HTTP routes of kvsaga-serve, one module per concern; each exposes `router`."""
