"""NNX layers that run on jaxsched's own kernels (drop-in for user Flax models)."""

__all__: list[str] = []
