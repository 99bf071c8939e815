"""Masks: the Mask type and its set operations, the builders and their registry, composition."""
from persona_interp.masks import damage_aware  # noqa: F401  (registers the damage-aware methods in the registry)
