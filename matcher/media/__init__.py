"""Media metadata: read every generator's parameters from images, videos and sidecars.

Public API (the CLI and the Python API of issue 8 wrap these):

- ``extract_comprehensive_metadata(path)`` -> the parsed record of one file (what ``inspect --json`` prints)
- ``extract_within_budget(path)`` -> the same, read in a worker process within a time and memory budget
- ``find_metadata_text_file(image_path)`` -> the ``.txt``/``.json`` sidecar beside an image, or None
- ``extract_library(db, force=False, progress=None)`` -> summary; fills generations, lora_usages,
  resources and media_info for every ``files`` row with kind='media'

Layout: ``containers`` (PNG/JPEG/WebP/GIF/MP4/WebM/stealth readers), ``a1111`` (infotext), ``comfyui``
(graph to record, with ``comfy_graph`` (links, walks) and ``comfy_chain`` (save node, passes)), ``invokeai`` (its three formats), ``json_generators`` (NovelAI, Fooocus, SwarmUI,
EasyDiffusion), ``comfy_hosts`` (Civitai, TensorArt, Stability Matrix: their JSON beside a ComfyUI graph),
``text_generators`` (Draw Things' XMP, sidecar lines), ``parse`` (dispatch), ``normalise`` (record, LoRAs,
canonical JSON), ``resource_list`` (resources merged through an index), ``imaging`` (BlurHash, thumbnail, EXIF facts), ``extract`` (files and the database),
``budget`` (worker processes that hold each file to a CPU and memory budget).
"""
from .extract import (extract_comprehensive_metadata, extract_files_within_budget, extract_library,
                      extract_within_budget, find_metadata_text_file)

__all__ = ["extract_comprehensive_metadata", "extract_files_within_budget", "extract_library", "extract_within_budget",
           "find_metadata_text_file"]
