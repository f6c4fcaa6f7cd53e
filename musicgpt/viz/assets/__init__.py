"""Package data of the viewer: the HTML template, its CSS and its JavaScript."""
