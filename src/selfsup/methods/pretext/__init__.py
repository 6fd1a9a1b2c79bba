"""The classic pretext tasks (rotation, jigsaw, colorization, ...): one module per method."""
