"""Shipped hyper-parameter presets, one TOML file per dataset (``la.toml``, ``acdc.toml``).

Read them through :func:`mper.train.config.load_config`. Beside them, ``recipe.toml``
holds what the paper states and what the authors' code does for every setting, and
:mod:`mper.presets.table` turns it and the presets into the recipe table of docs/recipe.md.
"""
