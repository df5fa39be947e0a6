"""An independent NVFP4 reference written from the format's definition (nvfp4, numpy) and the packed layout in torch
(pack)."""
