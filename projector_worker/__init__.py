"""The projector: runs the domains' projections, each consuming committed events from its own
queue into its own views in Redis."""
