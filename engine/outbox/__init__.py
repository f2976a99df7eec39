"""Delivering the notification outbox: the channels (`channels.py`: an Apprise URL, a command) and
the deliverer that runs on the active (`deliverer.py`: due rows → rate limit → channel → recorded
outcome, with retries and backoff).

Layer: outbox (with agents and control). May import exec, store, notify and the base modules; Apprise
is imported only when a `url` channel is built, so the listing commands never load it.
"""
