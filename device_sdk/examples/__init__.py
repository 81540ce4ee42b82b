"""Runnable device examples: `python -m device_sdk.examples.temperature_sensor --help` and
`python -m device_sdk.examples.relay --help`."""
