"""Entry points that start the reference stacks inside their own virtual environments."""
