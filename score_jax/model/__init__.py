"""The decoder-only transformer: its config, layers and the model itself."""
