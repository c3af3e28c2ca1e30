"""Read models for people: a notification's timeline and the notifications list.

They read the log (and the pending queue for due times and leases) and take
their states and reasons from the lifecycle; the worker pool never uses them.
"""

from __future__ import annotations
