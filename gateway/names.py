"""AWS IoT's rules for thing and shadow names, defined once in the device SDK (which must
not import the gateway) and re-exported here for the registry, discovery, shadows and
config. Use `fullmatch`."""

from device_sdk.names import SHADOW_NAME, SHADOW_NAME_RULE, THING_NAME, THING_NAME_RULE

__all__ = ["SHADOW_NAME", "SHADOW_NAME_RULE", "THING_NAME", "THING_NAME_RULE"]
