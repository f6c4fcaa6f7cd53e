"""Package data of the studio: its page, CSS and JavaScript."""
