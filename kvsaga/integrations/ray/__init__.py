"""kvsaga on Ray Serve (`pip install kvsaga[cluster]`): N engine replicas behind one
OpenAI-compatible endpoint, routed by `kvsaga.routing` through a custom Ray Serve
`RequestRouter` (`router.KvsagaRequestRouter`); the deployment is in `deployment.py`."""
