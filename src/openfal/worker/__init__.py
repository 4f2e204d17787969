"""Workers: runner processes for some apps, and the loop that claims their work."""
