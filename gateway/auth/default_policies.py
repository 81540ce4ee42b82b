"""Policies the gateway creates for itself on first use."""

import json

DEVICE_POLICY_NAME = "lichen-device"

# What a Greengrass client device typically gets: connect as its own thing, and use its own
# topics (things/<thing>/...) and its own shadows ($aws/things/<thing>/...).
DEVICE_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive", "iot:RetainPublish"],
         "Resource": ["arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*",
                      "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*"]},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": ["arn:aws:iot:*:*:topicfilter/things/${iot:Connection.Thing.ThingName}/*",
                      "arn:aws:iot:*:*:topicfilter/$aws/things/"
                      "${iot:Connection.Thing.ThingName}/*"]},
    ],
}, indent=2)

ALLOW_ALL_NAME = "allow-all"
