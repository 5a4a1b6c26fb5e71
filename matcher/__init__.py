"""Scan a local collection, hash it the way Civitai does, read image metadata, match and sort."""
