"""Tasks: problems of a split, the turn-1 prompt, the turn-2 instruction and the reward (see `base`)."""
