"""Transform: what is done to a message before it leaves."""
