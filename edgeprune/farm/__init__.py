"""A device farm: agents listed in a farm file (devices.toml), leased one measurement at a time, as one Device."""
