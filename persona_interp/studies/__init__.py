"""Studies built from the library: their configs, the main job (reproduce), atlas, composition, regimes."""
