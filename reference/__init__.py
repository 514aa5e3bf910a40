"""Reference (oracle) implementations: plain Python and NumPy, readable as the specification."""
