"""Offline datasets: on-disk episode storage (`storage`), generation (`generate`), training clips (`clips`).

Nothing is imported here on purpose: generation workers import `lewm.data.generate` in fresh processes,
and pulling in torch (through `clips`) would add a second to every worker's start-up.
"""
