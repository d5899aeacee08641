"""jaxsched.pipelines."""

__all__: list[str] = []
