"""Policy: which mail is tagged, for which department, and how each recipient can be reached."""
