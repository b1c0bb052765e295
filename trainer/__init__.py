"""The RL trainer. Built in the trainer issue."""
