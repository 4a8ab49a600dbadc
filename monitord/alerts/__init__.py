"""Webhook alerts: pure rules and formats, one sender, a durable outbox in the store."""
