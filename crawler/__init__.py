"""Async crawler of Civitai's public REST API into a blocked dump folder."""
