"""Masks: the Mask type and its set operations, the builders and their registry, composition."""
