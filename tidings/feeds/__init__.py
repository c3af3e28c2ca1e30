"""The in-app feed: each user's items and counts, engagement marks, and the fan-out hub.

The read model (tidings.feed_items, tidings.feed_counts) is an inline
projection of the log kept by a trigger (migration 0009); this room reads it,
appends the user's marks as events on the notification aggregate, drops old
items (retention) and hands new feed events to connected users (FeedHub).
"""

from __future__ import annotations
