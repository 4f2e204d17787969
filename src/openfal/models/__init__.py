"""Built-in model apps."""
