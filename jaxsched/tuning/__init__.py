"""jaxsched.tuning."""

__all__: list[str] = []
