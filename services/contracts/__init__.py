"""Shared contracts every Chuangwei service imports.

Nothing here imports nameko: node identity (division codes), the event envelope and
event payloads, place and subject vocabularies, and the checklist catalogue.
"""
