"""The command side: consumes commands, decides with the Order aggregate, appends events."""
