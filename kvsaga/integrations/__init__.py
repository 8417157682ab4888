"""kvsaga inside other serving engines, enabled by their own configuration (no fork, no patch).

- `kvsaga.integrations.vllm`: a retention KV connector and a CPU-offload cache policy for vLLM
  (install the `kvsaga[vllm]` extra; supported versions in docs/integrations.md).
- `kvsaga.integrations.ray`: kvsaga-serve as N replicas on Ray Serve, routed by
  `kvsaga.routing` (install the `kvsaga[cluster]` extra; docs/cluster.md).

Each integration imports its engine only when the engine loads it, so `import kvsaga` never
pulls one in.
"""
