"""Built-in policies: plugins on the same hook spec as everyone else's."""
