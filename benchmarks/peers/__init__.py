"""Peer implementations of queuewatch's jobs, run in their own environments for comparison."""
