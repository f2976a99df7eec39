"""Notification events, pure: what happened (`events.Event`), its stable id, the JSON document a
channel receives, and the title and body an Apprise channel shows.

The events are written to the outbox (`store.intents.NotificationQueued`) in the same transaction
as the state change that causes them; `engine/outbox/` delivers them.

Layer: notify (with schedule, config, store). Imports the base modules only.
"""
