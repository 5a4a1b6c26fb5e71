"""Async crawler of Civitai's public REST API into a blocked dump folder."""

__version__ = "0.1.0"
