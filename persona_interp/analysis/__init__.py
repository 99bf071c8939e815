"""Analysis: where subnetworks sit (localise), causal tests, mask diagnostics, regime geometry."""
