"""The three newsflow services; they never import one another, only `shared`."""
