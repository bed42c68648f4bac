"""MQTT: the one paho client factory, the publisher that owns it, the durable outbox, payloads and
their JSON Schemas."""
