"""Training (Eq. 9-11 losses, the loop, resumable checkpoint sets, distributed, expert health)."""
