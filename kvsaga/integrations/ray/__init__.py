"""kvsaga on Ray Serve (`pip install kvsaga[cluster]`): N engine replicas behind one
OpenAI-compatible endpoint, routed by `kvsaga.routing` through a custom Ray Serve
`RequestRouter` (`router.KvsagaRequestRouter`); the engine replicas and the application
are in `deployment.py`, the HTTP gateway in front of them in `gateway.py`."""
