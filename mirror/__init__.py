"""civitai.sqlite: built from the crawler's dump, looked up by hash, served through Datasette."""
