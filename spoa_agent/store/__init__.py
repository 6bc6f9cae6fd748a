"""Redis: the connection, and the token records every agent shares."""
