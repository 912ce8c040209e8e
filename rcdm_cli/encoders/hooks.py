"""The plugin interface: one hook through which a plugin registers encoders.

A plugin is a module exposed under the ``rcdm`` entry-point group of its
distribution::

    [project.entry-points.rcdm]
    my_encoders = "my_package.rcdm_plugin"

with a function marked ``@hookimpl``::

    from rcdm_cli.encoders import EncoderSpec, hookimpl

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(...))
"""

from __future__ import annotations

import pluggy

PROJECT = "rcdm"
ENTRY_POINT_GROUP = "rcdm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class EncoderHooks:
    @hookspec
    def register_encoders(self, register):
        """Call ``register(spec)`` once per :class:`~rcdm_cli.encoders.spec.EncoderSpec`
        the plugin provides."""
