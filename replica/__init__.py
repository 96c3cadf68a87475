"""The follower side of replication (issue 6); empty for now."""
