"""The model step: the adapter (every hook and map name), loading, chat formatting and generation."""
