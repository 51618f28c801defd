"""Search spaces, candidates and the layer IR (`LayerSpec`) every other part of tritune reads."""
from .base import Gene, SearchSpace
from .candidate import SCHEMA_VERSION, Candidate
from .compression import KNOWN_PATTERNS, PATTERN_FAMILIES, CompressionMenu, LayerCompression, parse_pattern, pattern_allowed
from .layers import LayerSpec, summarize
from .mobilenet import MobileNetSpace
from .nb201 import NB201Space
from .registry import create, list_spaces, register_space
from .vit import ViTSpace

__all__ = [
    "Candidate", "CompressionMenu", "Gene", "KNOWN_PATTERNS", "LayerCompression", "LayerSpec", "MobileNetSpace",
    "NB201Space", "PATTERN_FAMILIES", "SCHEMA_VERSION", "SearchSpace", "create", "list_spaces", "parse_pattern",
    "ViTSpace", "pattern_allowed", "register_space", "summarize",
]
