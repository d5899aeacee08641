"""jaxsched.pallas."""

__all__: list[str] = []
