"""Tornado handlers: thin adapters from HTTP to the services."""
