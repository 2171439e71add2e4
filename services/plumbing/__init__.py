"""Shared nameko plumbing: one db provider, one outbox relay, one reliable event
consumer (idempotent, dead-lettering), one HTTP error handler, metrics and ops endpoints.
Every service gains a change here at once.
"""
