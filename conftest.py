"""Repository-level test wiring: pytester for the end-to-end runs of the plugin."""

pytest_plugins = ["pytester"]
