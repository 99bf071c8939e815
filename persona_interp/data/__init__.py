"""The data step: persona datasets and their files, retrieval, and safe file writing."""
