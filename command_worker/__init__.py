"""The command side: consumes commands, decides with the domains' aggregates, appends events."""
