"""newsflow's own package: the event contract and what the three services share."""
