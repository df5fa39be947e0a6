"""The quantized checkpoint: llm-compressor in its own interpreter (quantize), kept warm (zygote, zygote_client), and
the content-addressed cache (cache, cache_lock, cache_manifest). Reading a checkpoint without torch: harness.checkpoint."""
