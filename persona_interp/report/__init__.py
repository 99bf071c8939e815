"""Reports: markdown, figures and interactive views."""
