"""Models for local functions: a registry from config and onnxruntime sessions, one per
worker process, created on first use and shared by every invocation that worker serves."""

from .registry import ModelError, ModelRegistry
from .settings import ModelSettings, parse_models

__all__ = ["ModelError", "ModelRegistry", "ModelSettings", "parse_models"]
