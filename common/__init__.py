"""The shared kernel: contracts, settings, messaging, event store, read-model keys, observability.

Nothing in here imports from a process package (gateway, command_worker, projector_worker).
"""
