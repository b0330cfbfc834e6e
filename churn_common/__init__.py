"""The one small shared home: settings, logging setup, names, errors and the feature-store handle.

It imports nothing else of this project; every stage imports it.
"""
