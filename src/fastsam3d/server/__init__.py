"""REST server and web viewer."""
