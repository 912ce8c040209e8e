"""The plugin interface: two hooks, through which a plugin registers encoders and
visual attributes (a module may implement either or both).

A plugin is a module exposed under the ``rcdm`` entry-point group of its
distribution::

    [project.entry-points.rcdm]
    my_encoders = "my_package.rcdm_plugin"

with a function marked ``@hookimpl``::

    from rcdm_cli.plugin import AttributeSpec, EncoderSpec, hookimpl

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(...))

    @hookimpl
    def register_attributes(register):
        register(AttributeSpec(...))
"""

from __future__ import annotations

import pluggy

PROJECT = "rcdm"
ENTRY_POINT_GROUP = "rcdm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginHooks:
    @hookspec
    def register_encoders(self, register):
        """Call ``register(spec)`` once per :class:`~rcdm_cli.encoders.spec.EncoderSpec`
        the plugin provides."""

    @hookspec
    def register_attributes(self, register):
        """Call ``register(spec)`` once per
        :class:`~rcdm_cli.encoders.attributes.AttributeSpec` the plugin provides
        (estimators that ``rcdm evaluate attributes`` measures on conditioning images
        and samples)."""
