"""AWS IoT's rules for thing and shadow names: one definition for the registry, discovery,
shadows, config and the device SDK. Use `fullmatch`."""

from __future__ import annotations

import re

THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
SHADOW_NAME = re.compile(r"[$a-zA-Z0-9:_-]{1,64}")
THING_NAME_RULE = "1-128 characters of a-z, A-Z, 0-9, ':', '_' and '-'"
