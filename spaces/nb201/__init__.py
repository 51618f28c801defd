"""The NAS-Bench-201 family: the 6-edge x 5-op cell and its published index order."""
from .space import NB201Space

__all__ = ["NB201Space"]
