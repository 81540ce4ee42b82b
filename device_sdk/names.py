"""AWS IoT's rules for thing and shadow names: one definition for the device SDK and the
gateway (registry, discovery, shadows, config), which imports it from here. Use `fullmatch`.

Pure: standard library only, so a device can check a name without the rest of the SDK."""

from __future__ import annotations

import re

THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
SHADOW_NAME = re.compile(r"[$a-zA-Z0-9:_-]{1,64}")
THING_NAME_RULE = "1-128 characters of a-z, A-Z, 0-9, ':', '_' and '-'"
SHADOW_NAME_RULE = "1-64 characters of a-z, A-Z, 0-9, '$', ':', '_' and '-'"
