"""(being written)"""


def register(sub, named) -> None:
    """Add this module's commands to the `hyperplane` parser (`named` adds --name)."""
