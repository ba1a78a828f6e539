"""SCoRe's RL core: rollouts into Episodes, the losses, the jitted steps, baselines, stage plans."""
