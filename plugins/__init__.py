"""rcdm's built-in encoder plugins, installed as the import package ``rcdm_plugins``.

Each module registers its encoders through the same entry-point group a third-party
plugin uses; nothing here is imported by ``rcdm_cli`` directly.
"""
