"""Runnable examples of eventbus."""
