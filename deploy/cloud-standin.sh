#!/bin/sh
# A local stand-in for AWS IoT Core: mosquitto with mutual TLS on 127.0.0.1.
# Usage: deploy/cloud-standin.sh --dir DIR [--port 8884] [--thing NAME]
# Prints the settings for the gateway's [cloud] table (and writes DIR/gateway.toml, a
# complete config), then runs mosquitto until SIGTERM/SIGINT, which stop it too.
set -e
{ command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } || { echo "needs mosquitto: apt-get install -y mosquitto" >&2; exit 1; }
cd "$(dirname "$0")/.."
exec python3 -m gateway.cloud.standin "$@"
