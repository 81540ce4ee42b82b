"""`lichen ...` commands. Each exits 0 on success, or non-zero with one line on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path

from .cli_auth import add_auth_commands
from .cli_deploy import add_deploy_commands
from .cli_functions import add_function_commands
from .cli_shadow import add_shadow_commands
from .cli_usage import Parser, VersionAction, help_when_bare
from .config import DEFAULT_CONFIG_TOML, GatewayConfig, config_from_dict, load_config
from .errors import UserError, describe_os_error
from .state_dir import (
    CONFIG_NAME,
    default_state_dir,
    ensure_state_dir,
    is_running,
    read_status,
)


class CLIError(UserError):
    """Reported as one line on stderr, exit status 1."""


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def resolve_config(state_dir: Path, config_file: str | None) -> GatewayConfig:
    """--config FILE, else DIR/config.toml, else the embedded default config."""
    if config_file:
        return load_config(config_file)
    in_dir = state_dir / CONFIG_NAME
    if in_dir.exists():
        return load_config(in_dir)
    return config_from_dict(tomllib.loads(DEFAULT_CONFIG_TOML))


def cmd_init(args: argparse.Namespace) -> int:
    state_dir = ensure_state_dir(_state_dir(args))
    cfg_path = state_dir / CONFIG_NAME
    if cfg_path.exists() and not args.force:
        print(f"{cfg_path} already exists (use --force to overwrite)")
        return 0
    cfg_path.write_text(DEFAULT_CONFIG_TOML)
    os.chmod(cfg_path, 0o600)
    from .auth.commands import open_auth

    open_auth(state_dir)
    print(f"initialised {state_dir}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run, setup_logging
    from .deployment.boot import run_config

    state_dir = ensure_state_dir(_state_dir(args))
    # --config FILE runs that file and refuses deployments; else the deployed version
    cfg, boot = run_config(state_dir, args.config)
    if args.mqtt_port is not None:
        cfg.listeners.tcp_host = "127.0.0.1"
        cfg.listeners.tcp_port = args.mqtt_port
    if args.tls_port is not None:
        cfg.listeners.tls_port = args.tls_port or None
    if args.discovery_port is not None:
        if not 0 <= args.discovery_port <= 65535:
            raise CLIError(f"--discovery-port: must be between 0 and 65535, got "
                           f"{args.discovery_port}")
        cfg.discovery.enabled = args.discovery_port != 0
        cfg.discovery.port = args.discovery_port or cfg.discovery.port
    setup_logging(args.log_level or cfg.log_level)
    try:
        run(cfg, state_dir, boot)
    except OSError as exc:
        raise CLIError(f"cannot start the gateway: {describe_os_error(exc)}") from None
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    if not state_dir.is_dir():
        raise CLIError(f"no state directory at {state_dir}")
    status = read_status(state_dir) or {}
    running = is_running(state_dir)
    status["state"] = "running" if running else "stopped"
    if running and time.time() - status.get("time", 0) > 30:
        status["stale"] = True
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(f"state: {status['state']}")
        mqtt = status.get("mqtt")
        if running and mqtt:
            print(f"pid: {status.get('pid')}")
            print(f"uptime: {mqtt['uptime_s']} s")
            print(f"listeners: {', '.join(mqtt['listeners']) or 'none'}")
            print(f"clients connected: {mqtt['clients_connected']} "
                  f"(sessions {mqtt['sessions']})")
            print(f"subscriptions: {mqtt['subscriptions']}  retained: {mqtt['retained']}")
            stats = mqtt["stats"]
            print(f"messages in/out: {stats['messages_received']}/{stats['messages_sent']}")
        cloud = status.get("cloud")
        if running and cloud:
            print(f"cloud: {cloud['state']}" + (f" ({cloud['endpoint']})"
                                                if cloud.get("endpoint") else ""))
            spool = cloud.get("spool")
            if spool:
                print(f"spool: {spool['messages']} messages, {spool['bytes']} bytes; "
                      f"{spool['sent_acknowledged']} sent, {spool['refused_full']} refused, "
                      f"{spool['dropped_oldest']} dropped when full")
                eta = spool.get("drain_eta_s")
                drains = ("empty" if not spool["messages"] else "not draining" if eta is None
                          else f"empty in about {eta:g} s")
                print(f"backlog: oldest {spool.get('oldest_age_s') or 0:g} s, acknowledged "
                      f"{spool.get('drain_per_s', 0):g}/s, {drains}")
    if not running:
        print(f"lichen: no gateway is running on {state_dir}", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lichen", description="Lichen edge IoT gateway")
    parser.add_argument("--version", action=VersionAction, help="print lichen's version")
    sub = parser.add_subparsers(dest="command", required=True)

    def state_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", help="state directory (default: /var/lib/lichen as "
                       "root, else ~/.local/state/lichen; or $LICHEN_STATE_DIR)")

    p = sub.add_parser("init", help="create the state directory and a default config")
    state_dir_arg(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    state_dir_arg(p)
    p.add_argument("--mqtt-port", type=int, help="plaintext MQTT listener on 127.0.0.1:N")
    p.add_argument("--tls-port", type=int, help="mutual-TLS device listener port (default "
                   "8883; 0 turns it off)")
    p.add_argument("--discovery-port", type=int, help="Greengrass discovery (HTTPS) port "
                   "(default 8443; 0 turns it off)")
    p.add_argument("--config", help="config file, run as it is, refusing deployments "
                   "(default: the deployed version over STATE_DIR/config.toml, else the "
                   "embedded defaults)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    add_auth_commands(sub, state_dir_arg)
    add_shadow_commands(sub, state_dir_arg)
    add_function_commands(sub, state_dir_arg)
    add_deploy_commands(sub, state_dir_arg)

    p = sub.add_parser("status", help="show whether the gateway runs, and its figures")
    state_dir_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    help_when_bare(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at exit
        return rc
    except BrokenPipeError:
        _drop_stdout()
        return 141  # as if killed by SIGPIPE, which is how other tools leave a closed pipe
    except UserError as exc:
        print(f"lichen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a state directory this user may not read
        print(f"lichen: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (tests redirect it to a StringIO)
        pass


if __name__ == "__main__":
    sys.exit(main())
