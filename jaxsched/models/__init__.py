"""jaxsched.models."""

__all__: list[str] = []
