"""The /inbox page: one static HTML file with plain JavaScript, no build step.

`tidings serve` answers GET /inbox with it. It takes a token (typed in, or
`#token=...` in the address: a fragment never reaches a server or its logs),
shows the feed with its unread badge, marks items read, and follows the event
stream, resuming after the last position it saw.
"""

from __future__ import annotations

from importlib import resources

INBOX_MEDIA_TYPE = "text/html; charset=utf-8"
# The page loads nothing from elsewhere: scripts and styles are inline, data
# comes from the same origin.
INBOX_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def inbox_html() -> bytes:
    """The page, as served."""
    return resources.files("tidings.feeds").joinpath("static", "inbox.html").read_bytes()
