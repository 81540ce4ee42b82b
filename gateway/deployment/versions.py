"""Versions on disk and the atomic switch between them.

    STATE_DIR/deployments/staging/N/    being built by deployment N (never run)
    STATE_DIR/deployments/versions/N/   config.toml (the deployable sections), deployment.json,
                                        artifacts/NAME/...
    STATE_DIR/deployments/current       symlink to versions/N; absent = version 0, the
                                        gateway's own config.toml alone

A version directory is complete and fsync'd before it is renamed into versions/, and the
switch is one rename of a new symlink over `current`, then an fsync of the directory: after
a crash at any point the gateway finds the old version or the new one, whole.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tomllib
from pathlib import Path

from ..config import DEFAULT_CONFIG_TOML, GatewayConfig, config_from_dict, load_config
from ..state_dir import CONFIG_NAME
from .document import DEPLOYABLE

DEPLOY_DIR = "deployments"
VERSION_CONFIG = "config.toml"


def root(state_dir: Path) -> Path:
    return state_dir / DEPLOY_DIR


def version_dir(state_dir: Path, version: int) -> Path:
    return root(state_dir) / "versions" / str(version)


def staging_dir(state_dir: Path, deployment_id: int) -> Path:
    return root(state_dir) / "staging" / str(deployment_id)


def current_version(state_dir: Path) -> int:
    """The version `current` points at; 0 when no deployment is current."""
    link = root(state_dir) / "current"
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return 0
    return int(Path(target).name)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Every file and directory under path (and path) on disk."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def publish_version(state_dir: Path, deployment_id: int) -> Path:
    """staging/N -> versions/N, durably. N is the deployment's id."""
    src = staging_dir(state_dir, deployment_id)
    dest = version_dir(state_dir, deployment_id)
    fsync_tree(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # left by a crash after an earlier rename: this run rebuilt it
        shutil.rmtree(dest)
    os.rename(src, dest)
    fsync_dir(dest.parent)
    fsync_dir(src.parent)
    return dest


def switch_to(state_dir: Path, version: int) -> None:
    """Point `current` at `version` (0: none) with one rename, fsync'd."""
    base = root(state_dir)
    base.mkdir(parents=True, exist_ok=True)
    link = base / "current"
    if version == 0:
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
    else:
        tmp = base / "current.tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(f"versions/{version}", tmp)
        os.replace(tmp, link)
    fsync_dir(base)


def discard_staging(state_dir: Path, deployment_id: int) -> None:
    shutil.rmtree(staging_dir(state_dir, deployment_id), ignore_errors=True)


def prune(state_dir: Path, keep: set[int], newest: int = 3) -> None:
    """Delete old version directories: all but `keep` and the `newest` few."""
    versions = root(state_dir) / "versions"
    if not versions.is_dir():
        return
    numbers = sorted((int(p.name) for p in versions.iterdir() if p.name.isdigit()),
                     reverse=True)
    for n in numbers[newest:]:
        if n not in keep:
            shutil.rmtree(versions / str(n), ignore_errors=True)


def base_data(state_dir: Path) -> dict:
    """The gateway's own config.toml (else the embedded default), as a dict."""
    path = state_dir / CONFIG_NAME
    if path.exists():
        load_config(path)  # its errors, named as a config file's
        return tomllib.loads(path.read_text())
    return tomllib.loads(DEFAULT_CONFIG_TOML)


def compose(state_dir: Path, deployed: dict, version_path: Path) -> GatewayConfig:
    """The gateway's own sections with the deployed ones: checked by config_from_dict, as
    a config file is; relative paths start at the version directory."""
    data = {k: v for k, v in base_data(state_dir).items() if k not in DEPLOYABLE}
    data.update(deployed)
    return config_from_dict(data, version_path)


def version_config(state_dir: Path, version: int) -> GatewayConfig:
    """The whole config a gateway runs on `version` (0: its own config.toml)."""
    if version == 0:
        path = state_dir / CONFIG_NAME
        return load_config(path) if path.exists() else config_from_dict(
            tomllib.loads(DEFAULT_CONFIG_TOML))
    vdir = version_dir(state_dir, version)
    deployed = tomllib.loads((vdir / VERSION_CONFIG).read_text())
    return compose(state_dir, deployed, vdir.resolve())


def with_deployed(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """`running` (listeners as the command line set them, ...) with `new`'s deployable
    sections."""
    return dataclasses.replace(running, **{k: getattr(new, k) for k in DEPLOYABLE})
