"""Ferry's entry points: the `ferry` command line (cli/) and the device gateway (gateway/)."""
