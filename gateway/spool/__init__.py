"""The durable queue: only the store writes it, only the scheduler decides what is sent when."""
