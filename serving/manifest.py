"""Kept so `serving.manifest` imports go on working: the schema lives in the `aads_manifest` package."""

from aads_manifest import *  # noqa: F401,F403
from aads_manifest import __all__  # noqa: F401
