"""jaxsched.sparse."""

__all__: list[str] = []
