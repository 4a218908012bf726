"""Shipped hyper-parameter presets, one TOML file per dataset (``la.toml``, ``acdc.toml``).

Read them through :func:`mper.train.config.load_config`.
"""
